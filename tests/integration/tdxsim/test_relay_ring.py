"""The host's half of the vTPM relay ring against a stand-in L1 (l1_min.relay) in the TD process:
commands reach L1 through the shared ring, answers come back when L1 halts (one TD exit per
command) or through RELAY_NOTIFY_PORT, a TD that writes a lying ring is refused at either and the
host keeps serving, and a stop ends the run."""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from igvm import format as igvm_format
from igvm.build import build
from tdxdefs.relay import LAUNCH_OPTION_DEV_PLATFORM_PORT, RelayKind, RelayState
from tdxdefs.tdcall import PAGE_SIZE
from tdxsim.host.igvm_loader import IgvmLoadError, replay_directives, tdx_mask
from tdxsim.host.l1_image import build_l1_image
from tdxsim.host.relay import HostRelay, RelayCommand, RelayError
from tdxsim.host.vmm import RunResult, RunStatus, Vmm, simulated_platform
from tests.support.igvm_files import l1_igvm
from tests.support.relay_hook import RelayHub
from verifier.reference import reference_values

L1_MIN = Path(__file__).parent / "l1_min"
IMAGE_GPA = 0x100000
RAM = [(0, 32 << 20)]
MAC_KEY, QUOTING = simulated_platform(b"test_relay_ring")
ECHO = b"relayed by l1_min:"
NOTIFY = b"notify:"  # l1_min answers this command with the IO notify, then halts


@dataclass
class Serving:
    """A TD running the stand-in L1, the host relay attached, the host loop in a thread."""

    vmm: Vmm
    hub: RelayHub
    relay: HostRelay
    result: list[RunResult]

    def ask(self, message: bytes, vm: int = 1, locality: int = 0) -> tuple[RelayState, bytes]:
        return self.hub.submit(RelayCommand(vm, RelayKind.TPM_COMMAND, locality, message))


@contextmanager
def serving(command_line: bytes = b"", igvm: Path | None = None) -> Iterator[Serving]:
    hub = RelayHub(command_timeout_s=20)
    with Vmm(QUOTING) as vmm:
        vmm.create(RAM, mac_key=MAC_KEY)
        if igvm is None:
            vmm.load_l1_image(build_l1_image([L1_MIN], "l1_min.relay:serve"), IMAGE_GPA)
        else:
            vmm.load_igvm(igvm, RAM, command_line=command_line)
        vmm.aug_rest()
        vmm.finalize()
        assert vmm.host is not None
        relay = vmm.host.attach_relay(hub)
        result: list[RunResult] = []
        thread = threading.Thread(target=lambda: result.append(vmm.run(60)), daemon=True)
        thread.start()
        try:
            assert relay.ready.wait(20), "the stand-in L1 never shared the ring page"
            yield Serving(vmm, hub, relay, result)
        finally:
            relay.stop.set()
            thread.join(10)
            hub.close()
    assert not thread.is_alive()


def test_commands_go_through_the_ring_in_order_with_one_td_exit_each() -> None:
    with serving() as s:
        for i in range(50):
            state, answer = s.ask(b"command %d" % i, vm=2, locality=3)
            assert state == RelayState.RESPONSE
            assert answer == ECHO + bytes([2, 3]) + b"command %d" % i  # vm, locality as sent
        assert s.relay.stats.answered == 50
        assert (s.relay.stats.at_halt, s.relay.stats.at_notify) == (50, 0)
        # L1's HLT with the answer in the ring: the host answers and posts the next one there
        assert list(s.relay.stats.exits_per_command) == [1] * 50
        assert s.relay.stats.refused == deque()
    assert s.result[0].status == RunStatus.STOPPED
    assert s.vmm.proc.returncode == 0  # the TD process ended on SHUTDOWN, not killed


def test_answers_rung_with_the_notify_are_taken_there_between_answers_at_the_halt() -> None:
    with serving() as s:
        for i in range(21):  # the last at the HLT, so the one before it is counted
            doorbell = NOTIFY if i % 2 else b""
            state, answer = s.ask(doorbell + b"command %d" % i)
            assert (state, answer) == (
                RelayState.RESPONSE,
                ECHO + bytes([1, 0]) + b"command %d" % i,
            )
        assert s.relay.stats.answered == 21
        assert (s.relay.stats.at_halt, s.relay.stats.at_notify) == (11, 10)
        # an answer at the notify costs that exit and L1's HLT after it
        assert list(s.relay.stats.exits_per_command) == [1, 2] * 10 + [1]
        assert s.relay.stats.refused == deque()
    assert s.result[0].status == RunStatus.STOPPED


@pytest.mark.parametrize(
    ("lie", "refusal"),
    [
        (b"magic", "magic 0xbad"),
        (b"sequence", "sequence"),
        (b"length", "length 4096 runs past the 4096-byte page"),
        (b"version", "version 9"),
        (b"state", "state 1, expected RESPONSE or ERROR"),
        (b"idle", "state 0, expected RESPONSE or ERROR"),
        (b"vm", "vm 2, the command was for vm 1"),
    ],
)
@pytest.mark.parametrize("doorbell", [b"", NOTIFY], ids=["halt", "notify"])
def test_a_lying_ring_is_refused_and_the_host_keeps_serving(
    lie: bytes, refusal: str, doorbell: bytes
) -> None:
    with serving() as s:
        assert s.ask(b"before")[0] == RelayState.RESPONSE
        assert s.ask(doorbell + b"lie:" + lie) == (RelayState.ERROR, b"")
        assert len(s.relay.stats.refused) == 1
        assert refusal in s.relay.stats.refused[-1]
        assert "relay ring at GPA 0x800001e00000 refused" in s.relay.stats.refused[-1]
        state, answer = s.ask(b"after")
        assert (state, answer) == (RelayState.RESPONSE, ECHO + bytes([1, 0]) + b"after")
        assert s.relay.stats.answered == 2 and s.relay.stats.failed == 1
    assert s.result[0].status == RunStatus.STOPPED


def test_an_l1_that_missed_the_vector_is_rung_again_when_it_halts() -> None:
    with serving() as s:
        state, answer = s.ask(b"ignore the first ring")
        assert (state, answer) == (
            RelayState.RESPONSE,
            ECHO + bytes([1, 0]) + b"ignore the first ring",
        )
        assert s.relay.stats.rerung == 1
        assert s.relay.stats.exits_per_command[-1] == 2  # HLT rung again, HLT answered


def test_a_notify_with_nothing_in_flight_is_refused() -> None:
    with serving() as s:
        s.relay.write(0, 1, 1)  # as the IO handler does for a doorbell L1 rings out of turn
        assert "no command in flight" in s.relay.stats.refused[-1]
        assert s.ask(b"still serving")[0] == RelayState.RESPONSE


def test_a_command_larger_than_the_ring_is_refused_before_it_is_queued() -> None:
    with pytest.raises(RelayError, match="4097 bytes, the ring carries 4064"):
        RelayCommand(1, RelayKind.TPM_COMMAND, 0, bytes(4097))


def test_power_cycle_reaches_l1_with_the_launch_options(tmp_path: Path) -> None:
    l1 = tmp_path / "l1.img"
    l1.write_bytes(build_l1_image([L1_MIN], "l1_min.relay:serve"))
    l1_igvm(l1, tmp_path / "l1.igvm", IMAGE_GPA)
    options = b"tdp.relay=serve " + LAUNCH_OPTION_DEV_PLATFORM_PORT.encode()
    with serving(options, tmp_path / "l1.igvm") as s:
        command = RelayCommand(3, RelayKind.POWER_CYCLE, 0, b"")
        assert s.hub.submit(command) == (RelayState.RESPONSE, b"power-cycle vm 3: " + options)
    assert s.result[0].status == RunStatus.STOPPED


def test_the_host_never_writes_a_ring_l1_did_not_share() -> None:
    hub = RelayHub(command_timeout_s=0.5)
    with Vmm(QUOTING) as vmm:
        vmm.create(RAM, mac_key=MAC_KEY)
        vmm.load_l1_image(build_l1_image([L1_MIN], "l1_min.main:spin"), IMAGE_GPA)
        vmm.aug_rest()
        vmm.finalize()
        assert vmm.host is not None
        relay = vmm.host.attach_relay(hub)
        thread = threading.Thread(target=lambda: vmm.run(30), daemon=True)
        thread.start()
        try:
            # this L1 halts forever and never shares the ring: the command waits, then fails
            assert hub.submit(RelayCommand(1, RelayKind.TPM_COMMAND, 0, b"x"))[0] == (
                RelayState.ERROR
            )
            assert not relay.ready.is_set() and relay.stats.sent == 0
        finally:
            relay.stop.set()
            thread.join(10)


class _Pages:
    """A PageSink that keeps the pages it is given."""

    def __init__(self) -> None:
        self.pages: dict[int, bytes] = {}

    def add_page_run(self, gpa: int, pages: Sequence[bytes], *, measured: bool) -> None:
        for i, page in enumerate(pages):
            self.pages[gpa + i * PAGE_SIZE] = bytes(page)

    def add_shared_page(self, gpa: int, data: bytes) -> None:
        self.pages[gpa] = data


def _replay(path: Path, command_line: bytes) -> _Pages:
    igvm_file = igvm_format.read(path)
    mask, _gpaw = tdx_mask(igvm_file)
    sink = _Pages()
    replay_directives(igvm_file.directives, mask, RAM, 1, sink, command_line)
    return sink


def test_launch_options_land_in_the_command_line_parameter_or_are_refused(
    tmp_path: Path,
) -> None:
    l1 = tmp_path / "l1.img"
    l1.write_bytes(build_l1_image([L1_MIN], "l1_min.relay:serve"))
    platform = {"compatibility_mask": 1, "highest_vtl": 2, "shared_gpa_boundary": 47}
    component = {"name": "l1", "kind": "paravisor", "file": str(l1), "gpa": IMAGE_GPA}
    area = {
        "name": "boot-params",
        "gpa": 0x9000,
        "size": "4KiB",
        "parameters": [{"type": "command_line", "offset": 0x800}],
    }
    (tmp_path / "with.yaml").write_text(
        yaml.safe_dump({"platform": platform, "components": [component], "parameter_areas": [area]})
    )
    (tmp_path / "without.yaml").write_text(
        yaml.safe_dump({"platform": platform, "components": [component]})
    )
    build(tmp_path / "with.yaml", tmp_path / "with.igvm")
    build(tmp_path / "without.yaml", tmp_path / "without.igvm")
    page = _replay(tmp_path / "with.igvm", b"tdp.relay=serve").pages[0x9000]
    assert page[0x800:0x811] == b"tdp.relay=serve\0\0"
    # a relying party predicts the same launch event L1 extends into RTMR0
    values = reference_values(tmp_path / "with.igvm", command_line="tdp.relay=serve")
    assert values.launch_event == hashlib.sha384(page).digest()
    assert reference_values(tmp_path / "with.igvm").launch_event != values.launch_event
    assert _replay(tmp_path / "with.igvm", b"").pages[0x9000] == bytes(PAGE_SIZE)  # as before
    with pytest.raises(IgvmLoadError, match="has no command-line parameter"):
        _replay(tmp_path / "without.igvm", b"tdp.relay=serve")
    with pytest.raises(IgvmLoadError, match="must be ASCII without NUL bytes"):
        _replay(tmp_path / "with.igvm", b"tdp.relay=serve\0evil")
