"""The TPM CRB device L1 presents to each L2 (TCG PC Client Platform TPM Profile (PTP)
Specification, section 6.5 "CRB Interface", locality 0 only).

The register page at 0xFED40000 has no L2 alias, so every access is an EPT-violation exit that L1
decodes (`svsm.decode`) and hands to `CrbDevice.read`/`write`. The command/response buffer is a
separate page the L2 may write (CRB_CTRL_CMD_PA and CRB_CTRL_RSP_PA point to it), so the L2 fills
it at memory speed. The device follows the PTP state machine: Idle (tpmIdle) -> Ready (after
cmdReady) -> Executing (START = 1) -> Ready with the response in the buffer; goIdle returns to
Idle; a failing vTPM sets tpmSts (fatal error) until the next power cycle. At START the command is
copied out of L2 memory once and bounds-checked on the copy, so an L2 that rewrites the buffer
while the command runs cannot change what the vTPM executes. A START while executing, a START
outside Ready, a write to a read-only register or an access past the registers is refused and
counted in `refusals`, never queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntEnum, IntFlag

from tdxdefs.l2boot import TPM_CRB_BASE, TPM_CRB_SIZE
from vtpm.engine import error_response
from vtpm.wire import TPM_HEADER_SIZE, TPM_RC_COMMAND_SIZE, TPM_RC_FAILURE

CRB_BASE = TPM_CRB_BASE
CRB_REGISTER_PAGE_SIZE = TPM_CRB_SIZE
KEPT_REFUSALS = 64
LOGGED_REFUSALS = 64
TPM_COMMAND_SIZE_AT = 2
EPOCH_MASK = 0xFFFFFFFF  # the relay mailbox carries the epoch as a u32


class CrbRegister(IntEnum):
    """Register offsets within the locality-0 CRB page (PTP, Table "CRB Interface Registers")."""

    LOC_STATE = 0x00
    LOC_CTRL = 0x08
    LOC_STS = 0x0C
    INTF_ID = 0x30
    CTRL_EXT = 0x38
    CTRL_REQ = 0x40
    CTRL_STS = 0x44
    CTRL_CANCEL = 0x48
    CTRL_START = 0x4C
    INT_ENABLE = 0x50
    INT_STS = 0x54
    CTRL_CMD_SIZE = 0x58
    CTRL_CMD_LADDR = 0x5C
    CTRL_CMD_HADDR = 0x60
    CTRL_RSP_SIZE = 0x64
    CTRL_RSP_ADDR = 0x68


REGISTER_WIDTH = {reg: 4 for reg in CrbRegister} | {
    CrbRegister.INTF_ID: 8,
    CrbRegister.CTRL_EXT: 8,
    CrbRegister.CTRL_RSP_ADDR: 8,
}
REGISTERS_END = 0x70
_REGISTER_AT = {int(reg): reg for reg in CrbRegister}


class LocState(IntFlag):
    """TPM_LOC_STATE_x bits."""

    ESTABLISHED = 1 << 0
    LOC_ASSIGNED = 1 << 1
    REG_VALID = 1 << 7


class LocCtrl(IntFlag):
    """TPM_LOC_CTRL_x bits."""

    REQUEST_ACCESS = 1 << 0
    RELINQUISH = 1 << 1
    SEIZE = 1 << 2
    RESET_ESTABLISHMENT = 1 << 3


class CtrlReq(IntFlag):
    """TPM_CRB_CTRL_REQ_x bits."""

    CMD_READY = 1 << 0
    GO_IDLE = 1 << 1


class CtrlSts(IntFlag):
    """TPM_CRB_CTRL_STS_x bits: tpmSts is the fatal-error bit."""

    FATAL_ERROR = 1 << 0
    IDLE = 1 << 1


# TPM_CRB_INTF_ID_x: InterfaceType 1 (CRB active, bits 3:0), InterfaceVersion 1 (CRB, 7:4),
# CapDataXferSizeSupport 3 (64 bytes, 12:11), CapCRB (14), InterfaceSelector 1 (CRB, 18:17) and
# IntfSelLock (19): a CRB-only interface that cannot be switched to FIFO.
INTF_ID_VALUE = 0x1 | (0x1 << 4) | (0x3 << 11) | (1 << 14) | (0x1 << 17) | (1 << 19)


class CrbState(Enum):
    """Where the device is in the PTP CRB state machine."""

    IDLE = "idle"
    READY = "ready"
    EXECUTING = "executing"
    ERROR = "error"


# The register values of `CrbDevice._value` as plain ints (flag arithmetic costs a microsecond)
_IDLE = int(CtrlSts.IDLE)
_FATAL_ERROR = int(CtrlSts.FATAL_ERROR)
_REG_VALID = int(LocState.REG_VALID)
_LOC_STATE_ASSIGNED = int(LocState.REG_VALID | LocState.LOC_ASSIGNED)
_ERROR = CrbState.ERROR


@dataclass
class CrbDevice:
    """One L2's CRB. `buffer_read`/`buffer_write` reach the L2-writable buffer page; `execute`
    runs one command on that L2's vTPM (synchronously, or `complete` is called later)."""

    buffer_gpa: int
    buffer_size: int
    buffer_read: Callable[[int, int], bytes]
    buffer_write: Callable[[int, bytes], None]
    execute: Callable[[bytes], bytes | None]
    log: Callable[[str], None] = lambda _line: None
    state: CrbState = CrbState.IDLE
    loc_assigned: bool = False
    cancel: bool = False
    commands: int = 0
    refusals: deque[str] = field(default_factory=lambda: deque(maxlen=KEPT_REFUSALS))
    refused: int = 0
    epoch: int = 0  # changes the L2 did not make (`fail`, `reset`); the relay passes it on

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.refusals.append(why)
        if self.refused <= LOGGED_REFUSALS:  # a refusal loop must not flood the host log
            self.log(f"CRB: refused: {why}")

    def _value(self, reg: CrbRegister) -> int:
        if reg is CrbRegister.CTRL_STS:  # the register an L2 polls: plain ints, no flag objects
            state = self.state
            return _IDLE if state is CrbState.IDLE else _FATAL_ERROR if state is _ERROR else 0
        if reg is CrbRegister.CTRL_START:  # the other one it polls (a command's completion)
            return 1 if self.state is CrbState.EXECUTING else 0
        if reg is CrbRegister.LOC_STATE:
            return _LOC_STATE_ASSIGNED if self.loc_assigned else _REG_VALID
        if reg is CrbRegister.LOC_STS:
            return 1 if self.loc_assigned else 0  # Granted
        if reg is CrbRegister.INTF_ID:
            return INTF_ID_VALUE
        if reg is CrbRegister.CTRL_CANCEL:
            return 1 if self.cancel else 0
        if reg in (CrbRegister.CTRL_CMD_SIZE, CrbRegister.CTRL_RSP_SIZE):
            return self.buffer_size
        if reg is CrbRegister.CTRL_CMD_LADDR:
            return self.buffer_gpa & 0xFFFFFFFF
        if reg is CrbRegister.CTRL_CMD_HADDR:
            return self.buffer_gpa >> 32
        if reg is CrbRegister.CTRL_RSP_ADDR:
            return self.buffer_gpa
        return 0

    def read(self, offset: int, size: int) -> int:
        """An L2 load of `size` bytes at `offset` in the register page."""
        if size not in (1, 2, 4, 8) or not 0 <= offset <= CRB_REGISTER_PAGE_SIZE - size:
            self._refuse(f"read of {size} bytes at offset {offset:#x}")
            return 0
        reg = _REGISTER_AT.get(offset)
        if reg is not None and size <= REGISTER_WIDTH[reg]:
            return self._value(reg) & ((1 << 8 * size) - 1)  # the common case: one register
        image = bytearray(REGISTERS_END)
        for reg in CrbRegister:
            width = REGISTER_WIDTH[reg]
            image[reg : reg + width] = self._value(reg).to_bytes(width, "little")
        chunk = bytes(image[offset : offset + size]) if offset < REGISTERS_END else b""
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        """An L2 store of `size` bytes of `value` at `offset` in the register page."""
        reg = _REGISTER_AT.get(offset)
        if reg is None:
            self._refuse(f"write of {size} bytes at offset {offset:#x}: no register there")
            return
        if size != 4:
            self._refuse(f"write of {size} bytes to {reg.name}: registers are written as dwords")
            return
        match reg:
            case CrbRegister.LOC_CTRL:
                self._loc_ctrl(value)
            case CrbRegister.CTRL_REQ:
                self._ctrl_req(value)
            case CrbRegister.CTRL_CANCEL:
                self.cancel = bool(value & 1)
            case CrbRegister.CTRL_START:
                self._ctrl_start(value)
            case CrbRegister.INT_ENABLE if value:
                self._refuse(f"INT_ENABLE {value:#x}: this CRB has no interrupt (polling only)")
            case CrbRegister.INT_ENABLE:
                pass
            case _:
                self._refuse(f"write of {value:#x} to read-only {reg.name}")

    def _loc_ctrl(self, value: int) -> None:
        ctrl = LocCtrl(value & 0xF)
        if ctrl & LocCtrl.REQUEST_ACCESS:
            self.loc_assigned = True
        if ctrl & LocCtrl.RELINQUISH:
            self.loc_assigned = False

    def _ctrl_req(self, value: int) -> None:
        req = CtrlReq(value & 0x3)
        if self.state is CrbState.EXECUTING:
            self._refuse(f"CTRL_REQ {value:#x} while a command executes")
            return
        if req & CtrlReq.GO_IDLE and self.state is not CrbState.ERROR:
            self.state = CrbState.IDLE
        elif req & CtrlReq.CMD_READY and self.state is not CrbState.ERROR:
            self.state = CrbState.READY

    def _ctrl_start(self, value: int) -> None:
        if not value & 1:
            return
        if self.state is CrbState.EXECUTING:
            self._refuse("START while a command executes")
            return
        if self.state is not CrbState.READY:
            self._refuse(f"START in state {self.state.value} (needs cmdReady first)")
            return
        if not self.loc_assigned:
            self._refuse("START without locality 0 assigned")
            return
        command = self.buffer_read(0, self.buffer_size)  # the one copy; all checks on it
        size = int.from_bytes(command[TPM_COMMAND_SIZE_AT : TPM_COMMAND_SIZE_AT + 4], "big")
        self.state = CrbState.EXECUTING
        self.commands += 1
        if not TPM_HEADER_SIZE <= size <= self.buffer_size:
            self.log(f"CRB: command size {size} outside [{TPM_HEADER_SIZE}, {self.buffer_size}]")
            self.complete(error_response(TPM_RC_COMMAND_SIZE))
            return
        response = self.execute(command[:size])
        if response is not None:
            self.complete(response)

    def complete(self, response: bytes) -> None:
        """The vTPM answered: write the response to the buffer and clear START."""
        if self.state is not CrbState.EXECUTING:
            self._refuse("a response with no command executing")
            return
        if len(response) > self.buffer_size:
            self.log(
                f"CRB: {len(response)}-byte response exceeds the {self.buffer_size}-byte buffer"
            )
            response = error_response(TPM_RC_FAILURE)
        self.buffer_write(0, response)
        self.cancel = False
        self.state = CrbState.READY

    def fail(self, why: str) -> None:
        """The vTPM behind this CRB failed: fatal error until `reset`."""
        self.log(f"CRB: vTPM failed: {why}")
        self.state = CrbState.ERROR
        self.epoch = (self.epoch + 1) & EPOCH_MASK

    def reset(self) -> None:
        """A power cycle of the vTPM: back to Idle with locality released."""
        self.state = CrbState.IDLE
        self.loc_assigned = False
        self.cancel = False
        self.epoch = (self.epoch + 1) & EPOCH_MASK
