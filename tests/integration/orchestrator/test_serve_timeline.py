"""`invoke run --serve --timeline DIR` on the product image: the host, the TD process and the vTPM
worker each record their marks, and the per-step table printed at the end covers every command a
client sent through L2."""

from __future__ import annotations

import signal
import struct
from pathlib import Path

import pytest

from orchestrator.boot import build_product
from orchestrator.serve import main
from orchestrator.timeline import STEPS
from tdxdefs.timeline import FILE_GLOB, Mark
from tests.support.vtpm_process import launch_l2_serve

COMMANDS = 25
HOST = {Mark.CLIENT_COMMAND, Mark.HOST_ENTER, Mark.HOST_EXIT, Mark.CLIENT_ANSWER}
TD = {Mark.TD_ENTER, Mark.TD_EXIT}
WORKER = {Mark.WORKER_COMMAND, Mark.WORKER_ANSWER}


def test_serve_with_a_timeline_reports_every_relayed_command(tmp_path: Path) -> None:
    image = tmp_path / "tdp.igvm"
    build_product(image, out=lambda _line: None)
    timeline = tmp_path / "timeline"
    server = launch_l2_serve("--image", str(image), "--timeline", str(timeline))
    try:
        with server.esapi("swtpm") as ectx:
            for _ in range(COMMANDS):
                assert len(bytes(ectx.get_random(16))) == 16
    finally:
        code, out, err = server.stop(signal.SIGINT)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("timeline of "))
    assert header.endswith("relayed TPM commands (0 incomplete), us: median, 90th percentile")
    assert int(header.split()[2]) >= COMMANDS  # the ESAPI context may send its own too
    for step in STEPS.values():
        assert step in out
    kinds = []
    for path in timeline.glob(FILE_GLOB):
        data = path.read_bytes()
        kinds.append({Mark(value) for _when, value in struct.iter_unpack("<QQ", data)})
    assert HOST in kinds  # the serve process: relay server and host VMM loop
    assert TD in kinds
    assert WORKER in kinds


def test_a_directory_that_already_holds_a_timeline_is_refused_before_building(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "timeline-1.bin").write_bytes(b"")
    assert main(timeline=str(tmp_path)) == 2
    assert "already holds a timeline (timeline-*.bin); give an empty or new directory" in (
        capsys.readouterr().err
    )
