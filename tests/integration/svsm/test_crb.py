"""The CRB device over a real libtpms vTPM: the PTP state machine, and an L2 that misbehaves."""

from __future__ import annotations

import pytest

from svsm.crb import CRB_BASE, CrbDevice, CrbRegister, CrbState, CtrlSts, LocState
from vtpm.engine import TpmEngine, response_code
from vtpm.wire import TPM_RC_COMMAND_SIZE, TPM_RC_SUCCESS

BUFFER_GPA = 0x5F_F000
BUFFER_SIZE = 0x1000
GET_RANDOM_8 = bytes.fromhex("80010000000c0000017b0008")


class L2Buffer:
    """The L2-writable command/response page, as L1 reaches it; counts L1's reads of it."""

    def __init__(self) -> None:
        self.data = bytearray(BUFFER_SIZE)
        self.reads = 0
        self.during_execute: bytes | None = None

    def read(self, offset: int, length: int) -> bytes:
        self.reads += 1
        return bytes(self.data[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        self.data[offset : offset + len(data)] = data


@pytest.fixture
def l2() -> L2Buffer:
    return L2Buffer()


@pytest.fixture
def crb(engine: TpmEngine, l2: L2Buffer) -> CrbDevice:
    return CrbDevice(BUFFER_GPA, BUFFER_SIZE, l2.read, l2.write, engine.process)


def ready(crb: CrbDevice) -> None:
    crb.write(CrbRegister.LOC_CTRL, 4, 1)  # requestAccess
    crb.write(CrbRegister.CTRL_REQ, 4, 1)  # cmdReady


def test_driver_view_of_the_registers(crb: CrbDevice) -> None:
    assert CRB_BASE == 0xFED40000
    assert crb.read(CrbRegister.INTF_ID, 4) & 0xF == 1  # InterfaceType: CRB active
    assert crb.read(CrbRegister.CTRL_STS, 4) == CtrlSts.IDLE
    assert crb.read(CrbRegister.CTRL_CMD_SIZE, 4) == BUFFER_SIZE
    low = crb.read(CrbRegister.CTRL_CMD_LADDR, 4)
    high = crb.read(CrbRegister.CTRL_CMD_HADDR, 4)
    assert high << 32 | low == BUFFER_GPA == crb.read(CrbRegister.CTRL_RSP_ADDR, 8)
    assert crb.read(CrbRegister.LOC_STATE, 4) == LocState.REG_VALID
    ready(crb)
    assert crb.read(CrbRegister.LOC_STATE, 1) == LocState.REG_VALID | LocState.LOC_ASSIGNED
    assert crb.read(CrbRegister.LOC_STS, 4) == 1  # Granted
    assert crb.read(CrbRegister.CTRL_STS, 4) == 0  # Ready: not idle, no error
    assert crb.read(0x800, 4) == 0 and list(crb.refusals) == []  # unused space reads as zero


def test_command_runs_and_its_response_lands_in_the_buffer(crb: CrbDevice, l2: L2Buffer) -> None:
    ready(crb)
    l2.write(0, GET_RANDOM_8)
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert crb.read(CrbRegister.CTRL_START, 4) == 0  # done
    size = int.from_bytes(l2.data[2:6], "big")
    assert response_code(bytes(l2.data[:size])) == TPM_RC_SUCCESS and size == 10 + 2 + 8
    assert crb.commands == 1 and l2.reads == 1  # the command was copied out exactly once
    crb.write(CrbRegister.CTRL_REQ, 4, 2)  # goIdle
    assert crb.state is CrbState.IDLE


def test_buffer_rewritten_during_execution_changes_nothing(engine: TpmEngine, l2: L2Buffer) -> None:
    seen: list[bytes] = []

    def racing_execute(command: bytes) -> bytes:
        l2.write(0, bytes.fromhex("80010000000c0000017b0040"))  # the L2 races: 64 bytes instead
        seen.append(command)
        return engine.process(command)

    crb = CrbDevice(BUFFER_GPA, BUFFER_SIZE, l2.read, l2.write, racing_execute)
    ready(crb)
    l2.write(0, GET_RANDOM_8)
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert seen == [GET_RANDOM_8]
    assert int.from_bytes(l2.data[10:12], "big") == 8  # the response is for the 8-byte request


@pytest.mark.parametrize("size", [0, 9, BUFFER_SIZE + 1, 0xFFFFFFFF])
def test_command_size_outside_the_buffer_is_answered_with_an_error(
    crb: CrbDevice, l2: L2Buffer, size: int
) -> None:
    ready(crb)
    l2.write(0, bytes.fromhex("8001") + size.to_bytes(4, "big") + bytes.fromhex("0000017b0008"))
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert response_code(bytes(l2.data[:10])) == TPM_RC_COMMAND_SIZE
    assert crb.state is CrbState.READY  # and the device keeps serving
    l2.write(0, GET_RANDOM_8)
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert response_code(bytes(l2.data[:20])) == TPM_RC_SUCCESS


def test_start_while_busy_is_refused_not_queued(l2: L2Buffer, engine: TpmEngine) -> None:
    pending: list[bytes] = []
    crb = CrbDevice(BUFFER_GPA, BUFFER_SIZE, l2.read, l2.write, lambda cmd: pending.append(cmd))
    ready(crb)
    l2.write(0, GET_RANDOM_8)
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert crb.read(CrbRegister.CTRL_START, 4) == 1 and crb.state is CrbState.EXECUTING
    crb.write(CrbRegister.CTRL_START, 4, 1)
    crb.write(CrbRegister.CTRL_REQ, 4, 2)
    assert list(crb.refusals) == [
        "START while a command executes",
        "CTRL_REQ 0x2 while a command executes",
    ]
    assert len(pending) == 1
    crb.complete(engine.process(pending[0]))
    assert crb.read(CrbRegister.CTRL_START, 4) == 0 and crb.state is CrbState.READY
    crb.complete(b"\0" * 10)
    assert crb.refusals[-1] == "a response with no command executing"


def test_start_outside_ready_or_without_locality_is_refused(crb: CrbDevice, l2: L2Buffer) -> None:
    l2.write(0, GET_RANDOM_8)
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert list(crb.refusals) == ["START in state idle (needs cmdReady first)"]
    crb.write(CrbRegister.CTRL_REQ, 4, 1)
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert crb.refusals[-1] == "START without locality 0 assigned" and crb.commands == 0


@pytest.mark.parametrize(
    ("offset", "size", "value", "refusal"),
    [
        (CrbRegister.INTF_ID, 4, 0, "write of 0x0 to read-only INTF_ID"),
        (CrbRegister.CTRL_CMD_LADDR, 4, 0x1000, "write of 0x1000 to read-only CTRL_CMD_LADDR"),
        (CrbRegister.CTRL_START, 1, 1, "write of 1 bytes to CTRL_START"),
        (0x80, 4, 1, "write of 4 bytes at offset 0x80: no register there"),
        (CrbRegister.INT_ENABLE, 4, 1, "INT_ENABLE 0x1: this CRB has no interrupt"),
    ],
)
def test_writes_the_device_does_not_take_are_refused(
    crb: CrbDevice, offset: int, size: int, value: int, refusal: str
) -> None:
    crb.write(offset, size, value)
    assert crb.refusals and crb.refusals[0].startswith(refusal)
    assert crb.read(CrbRegister.CTRL_CMD_LADDR, 4) == BUFFER_GPA & 0xFFFFFFFF


def test_oversized_response_becomes_a_failure_and_a_failed_vtpm_latches_an_error(
    l2: L2Buffer,
) -> None:
    crb = CrbDevice(BUFFER_GPA, BUFFER_SIZE, l2.read, l2.write, lambda _c: b"\x80\x01" * 4000)
    ready(crb)
    l2.write(0, GET_RANDOM_8)
    crb.write(CrbRegister.CTRL_START, 4, 1)
    assert response_code(bytes(l2.data[:10])) == 0x101  # TPM_RC_FAILURE
    crb.fail("worker exited")
    assert crb.read(CrbRegister.CTRL_STS, 4) & CtrlSts.FATAL_ERROR
    crb.write(CrbRegister.CTRL_REQ, 4, 1)
    assert crb.state is CrbState.ERROR  # cmdReady does not clear a fatal error
    crb.reset()
    assert crb.read(CrbRegister.CTRL_STS, 4) == CtrlSts.IDLE


def test_reads_past_the_page_or_of_odd_sizes_are_refused(crb: CrbDevice) -> None:
    assert crb.read(0xFFE, 4) == 0 and crb.read(0x40, 3) == 0
    assert len(crb.refusals) == 2
