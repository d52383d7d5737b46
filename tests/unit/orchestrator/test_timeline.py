"""Reading a recorded timeline: commands assembled from several processes' files in the order a
command passes them, other exits passed over, interrupted commands counted, bad files named."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from orchestrator.timeline import (
    STEPS,
    TimelineError,
    main,
    read_marks,
    report,
    summarize,
)
from tdxdefs.timeline import Mark

M = Mark
ONE_COMMAND = [  # (us, mark): a command with the TD's other exits and ENTERs around its own
    (0, M.CLIENT_COMMAND),
    (10, M.HOST_ENTER),
    (15, M.TD_ENTER),
    (100, M.TD_EXIT),  # an IO exit of L1's before the L2 STARTs: not this command's exit
    (104, M.HOST_EXIT),
    (106, M.HOST_ENTER),
    (140, M.WORKER_COMMAND),
    (160, M.WORKER_ANSWER),
    (300, M.TD_EXIT),
    (305, M.HOST_EXIT),
    (330, M.CLIENT_ANSWER),
]


def write(directory: Path, pid: int, marks: list[tuple[int, Mark]]) -> None:
    data = b"".join(struct.pack("<QQ", us * 1000, mark) for us, mark in marks)
    (directory / f"timeline-{pid}.bin").write_bytes(data)


def split_by_process(marks: list[tuple[int, Mark]], directory: Path) -> None:
    """Write marks as the processes that make them would: host, TD process, worker."""
    host = {M.CLIENT_COMMAND, M.HOST_ENTER, M.HOST_EXIT, M.CLIENT_ANSWER}
    td = {M.TD_ENTER, M.TD_EXIT}
    write(directory, 1, [m for m in marks if m[1] in host])
    write(directory, 2, [m for m in marks if m[1] in td])
    write(directory, 3, [m for m in marks if m[1] not in host | td])


def test_a_command_is_assembled_across_processes_in_the_order_it_passes_them(
    tmp_path: Path,
) -> None:
    second = [(us + 400, mark) for us, mark in ONE_COMMAND]
    split_by_process(ONE_COMMAND + second, tmp_path)
    summary = summarize(read_marks(tmp_path))
    assert (summary.commands, summary.incomplete) == (2, 0)
    assert summary.steps[M.HOST_ENTER] == [10.0, 10.0]
    assert summary.steps[M.TD_ENTER] == [5.0, 5.0]
    assert summary.steps[M.WORKER_COMMAND] == [125.0, 125.0]  # from the first ENTER
    assert summary.steps[M.WORKER_ANSWER] == [20.0, 20.0]
    assert summary.steps[M.TD_EXIT] == [140.0, 140.0]  # the exit after the answer, not the IO
    assert summary.steps[M.HOST_EXIT] == [5.0, 5.0]
    assert summary.steps[M.CLIENT_ANSWER] == [25.0, 25.0]
    assert summary.totals == [330.0, 330.0]
    assert summary.between == [70.0]


def test_a_command_that_never_reached_the_worker_is_incomplete(tmp_path: Path) -> None:
    cut = [m for m in ONE_COMMAND if m[1] not in (M.WORKER_COMMAND, M.WORKER_ANSWER)]
    later = [(us + 1000, mark) for us, mark in ONE_COMMAND]
    split_by_process(cut + later, tmp_path)
    summary = summarize(read_marks(tmp_path))
    assert (summary.commands, summary.incomplete) == (1, 1)
    assert summary.totals == [330.0]


def test_the_report_names_every_step_with_its_median(tmp_path: Path) -> None:
    split_by_process(ONE_COMMAND, tmp_path)
    text = report(summarize(read_marks(tmp_path)))
    assert text.startswith("timeline of 1 relayed TPM commands (0 incomplete)")
    for step in STEPS.values():
        assert step in text
    assert "    330     330  in all, from a client's command to its answer" in text


def test_a_file_cut_mid_record_is_named(tmp_path: Path) -> None:
    write(tmp_path, 7, ONE_COMMAND)
    path = tmp_path / "timeline-7.bin"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(TimelineError, match=r"timeline-7\.bin: 173 bytes are not whole 16-byte"):
        read_marks(tmp_path)


def test_an_unknown_mark_is_named_with_its_file_and_offset(tmp_path: Path) -> None:
    (tmp_path / "timeline-9.bin").write_bytes(struct.pack("<QQQQ", 1, 1, 2, 99))
    with pytest.raises(TimelineError, match=r"timeline-9\.bin, offset 16: unknown mark 99"):
        read_marks(tmp_path)


def test_a_directory_without_a_timeline_is_an_error_not_an_empty_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 1
    assert "no timeline-*.bin files (was --timeline given?)" in capsys.readouterr().err
