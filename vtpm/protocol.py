"""Framing of the vTPM sockets as sans-I/O parsers: swtpm data channel, mssim command/platform.

Command port: the first bytes of a connection choose its framing. swtpm's data channel carries bare
TPM 2.0 commands (tag 0x8001/0x8002 first); the TCG simulator ("mssim") protocol starts every
frame with a big-endian u32 command such as TPM_SEND_COMMAND = 8. Platform port (command port + 1):
mssim platform signals, each a u32 answered by a u32 status (0 success, 1 failure; SESSION_END
gets no answer), and the swtpm TCTI's CMD_SET_LOCALITY (see `PlatformChannel`). Framing facts
follow the TCG reference simulator's TcpServer protocol as spoken by the tss2 3.2.1 mssim TCTI.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar

from tdxdefs.layout import BIG_ENDIAN, Layout
from vtpm.engine import TPM_MAX_COMMAND_SIZE, check_command, error_response
from vtpm.errors import VtpmError
from vtpm.libtpms import TPM_FAIL
from vtpm.wire import (
    COMMAND_TAGS,
    TPM_HEADER,
    TPM_HEADER_SIZE,
    TPM_RC_BAD_TAG,
    TPM_RC_COMMAND_SIZE,
    TPM_RC_SUCCESS,
)

U32 = struct.Struct(">I")
TAG = struct.Struct(">H")
# What one recv() takes: a whole command is at most 4096 bytes, the rest is for pipelined frames.
RECV_SIZE = 65536


@dataclass(frozen=True, slots=True)
class MssimSendHeader(Layout):
    """TPM_SEND_COMMAND frame of the Microsoft TPM simulator protocol, after the u32 command."""

    NAME: ClassVar[str] = "TPM_SEND_COMMAND"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("locality", "B"), ("command_size", "I"))
    SIZE: ClassVar[int] = 5
    BYTE_ORDER: ClassVar[str] = BIG_ENDIAN

    locality: int
    command_size: int


MSSIM_SEND_HEADER = MssimSendHeader.STRUCT  # per-command path: the compiled struct
# TPM_REMOTE_HANDSHAKE reply: server version, then the "tpm plays nice" capability flags.
MSSIM_SERVER_VERSION = 1
MSSIM_TPM_PLAYS_NICE = 0x1
MSSIM_ACK = 0


class MssimCommand(enum.IntEnum):
    """u32 command codes of the TCG simulator protocol (command and platform ports)."""

    POWER_ON = 1
    POWER_OFF = 2
    PHYS_PRES_ON = 3
    PHYS_PRES_OFF = 4
    HASH_START = 5
    HASH_DATA = 6
    HASH_END = 7
    SEND_COMMAND = 8
    CANCEL_ON = 9
    CANCEL_OFF = 10
    NV_ON = 11
    NV_OFF = 12
    KEY_CACHE_ON = 13
    KEY_CACHE_OFF = 14
    REMOTE_HANDSHAKE = 15
    SET_ALTERNATIVE_RESULT = 16
    RESET = 17
    RESTART = 18
    SESSION_END = 20
    STOP = 21
    GET_COMMAND_RESPONSE_SIZES = 25
    ACT_GET_SIGNALED = 26
    TEST_FAILURE_MODE = 30


# Platform signals answered with a bare ack; each maps to what the server does.
PLATFORM_SIGNALS = frozenset(
    {
        MssimCommand.POWER_ON,
        MssimCommand.POWER_OFF,
        MssimCommand.PHYS_PRES_ON,
        MssimCommand.PHYS_PRES_OFF,
        MssimCommand.CANCEL_ON,
        MssimCommand.CANCEL_OFF,
        MssimCommand.NV_ON,
        MssimCommand.NV_OFF,
        MssimCommand.KEY_CACHE_ON,
        MssimCommand.KEY_CACHE_OFF,
        MssimCommand.RESET,
        MssimCommand.RESTART,
        MssimCommand.SESSION_END,
        MssimCommand.STOP,
    }
)
# Command-port frames we accept besides SEND_COMMAND.
COMMAND_PORT_CONTROLS = frozenset(
    {
        MssimCommand.REMOTE_HANDSHAKE,
        MssimCommand.SESSION_END,
        MssimCommand.STOP,
    }
)


class SwtpmControl(enum.IntEnum):
    """swtpm control commands served on port+1 (swtpm tpm_ioctl.h); `PlatformChannel` says why
    CMD_INIT and CMD_GET_CAPABILITY are not among them."""

    SET_LOCALITY = 0x05


# CMD_SET_LOCALITY payload after the u32 command: the locality (u8). The reply is a TPM_RESULT.
SWTPM_LOCALITY = struct.Struct(">B")


class Framing(enum.Enum):
    """How a command-port connection frames its TPM commands."""

    UNKNOWN = "unknown"
    SWTPM = "swtpm"
    MSSIM = "mssim"


class ProtocolError(VtpmError, ValueError):
    """The peer sent something that cannot be framed; the connection must be closed.

    `reply` is what to send before closing (a TPM error response in the connection's framing),
    or empty.
    """

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class TpmRequest:
    """One TPM command to run, and the locality it was sent at."""

    command: bytes
    locality: int = 0


@dataclass(frozen=True)
class ControlRequest:
    """A non-TPM request on either port: a simulator signal with its argument, if any."""

    code: MssimCommand
    argument: int = 0


@dataclass(frozen=True)
class SwtpmControlRequest:
    """A swtpm CMD_SET_LOCALITY that arrived on the platform port, with the locality asked for."""

    code: SwtpmControl
    argument: int = 0


Request = TpmRequest | ControlRequest


def mssim_response(response: bytes) -> bytes:
    """Frame a TPM response for an mssim client: u32 size, response, u32 ack."""
    return U32.pack(len(response)) + response + U32.pack(MSSIM_ACK)


def handshake_response() -> bytes:
    """Reply to TPM_REMOTE_HANDSHAKE: server version, capability flags, ack."""
    return U32.pack(MSSIM_SERVER_VERSION) + U32.pack(MSSIM_TPM_PLAYS_NICE) + U32.pack(MSSIM_ACK)


def ack() -> bytes:
    """The u32 zero that acknowledges a simulator signal."""
    return U32.pack(MSSIM_ACK)


def is_whole_swtpm_command(data: bytes) -> bool:
    """True if `data` is exactly one well-framed TPM 2.0 command (swtpm framing: no wrapper)."""
    return check_command(data) == TPM_RC_SUCCESS


class CommandChannel:
    """Parser for one command-port connection; detects its framing from the first bytes."""

    def __init__(self) -> None:
        self.framing = Framing.UNKNOWN
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0], for error messages

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def whole_command(self, data: bytes) -> bool:
        """True if `data` is exactly one well-framed swtpm command and nothing else is pending.

        The fast path for the swtpm TCTI, which sends each command in one write; anything else
        goes through feed() and next_request().
        """
        if self._buf or self.framing is Framing.MSSIM or not is_whole_swtpm_command(data):
            return False
        self.took_whole_command(len(data))
        return True

    def took_whole_command(self, size: int) -> None:
        """Record a whole swtpm-framed command of `size` bytes answered outside this parser."""
        self.framing = Framing.SWTPM
        self._offset += size

    @property
    def pending(self) -> int:
        """Bytes received but not yet consumed (a partial frame)."""
        return len(self._buf)

    def _consume(self, n: int) -> bytes:
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self._offset += n
        return out

    def _error(self, message: str, rc_reply: bytes) -> ProtocolError:
        return ProtocolError(f"{message} at stream offset {self._offset}", rc_reply)

    def next_request(self) -> Request | None:
        """The next complete request, or None if more bytes are needed; ProtocolError if bad."""
        if self.framing is Framing.UNKNOWN:
            if len(self._buf) < TAG.size:
                return None
            if TAG.unpack_from(self._buf)[0] in COMMAND_TAGS:
                self.framing = Framing.SWTPM
            else:
                self.framing = Framing.MSSIM
        if self.framing is Framing.SWTPM:
            return self._next_swtpm()
        return self._next_mssim()

    def _next_swtpm(self) -> Request | None:
        if len(self._buf) < TPM_HEADER_SIZE:
            return None
        tag, size, code = TPM_HEADER.unpack_from(self._buf)
        if tag not in COMMAND_TAGS:
            raise self._error(f"bad TPM command tag 0x{tag:04x}", error_response(TPM_RC_BAD_TAG))
        if size < TPM_HEADER_SIZE or size > TPM_MAX_COMMAND_SIZE:
            raise self._error(
                f"TPM command 0x{code:x} size {size} outside "
                f"{TPM_HEADER_SIZE}..{TPM_MAX_COMMAND_SIZE}",
                error_response(TPM_RC_COMMAND_SIZE),
            )
        if len(self._buf) < size:
            return None
        return TpmRequest(self._consume(size))

    def _next_mssim(self) -> Request | None:
        if len(self._buf) < U32.size:
            return None
        raw = U32.unpack_from(self._buf)[0]
        if raw == MssimCommand.SEND_COMMAND:
            need = U32.size + MSSIM_SEND_HEADER.size
            if len(self._buf) < need:
                return None
            locality, size = MSSIM_SEND_HEADER.unpack_from(self._buf, U32.size)
            if size < TPM_HEADER_SIZE or size > TPM_MAX_COMMAND_SIZE:
                raise self._error(
                    f"mssim TPM_SEND_COMMAND size {size} outside "
                    f"{TPM_HEADER_SIZE}..{TPM_MAX_COMMAND_SIZE}",
                    mssim_response(error_response(TPM_RC_COMMAND_SIZE)),
                )
            if len(self._buf) < need + size:
                return None
            self._consume(need)
            return TpmRequest(self._consume(size), locality)
        if raw == MssimCommand.REMOTE_HANDSHAKE:
            if len(self._buf) < 2 * U32.size:
                return None
            self._consume(U32.size)
            return ControlRequest(MssimCommand.REMOTE_HANDSHAKE, U32.unpack(self._consume(4))[0])
        if raw in COMMAND_PORT_CONTROLS:
            self._consume(U32.size)
            return ControlRequest(MssimCommand(raw))
        raise self._error(f"unknown command-port frame 0x{raw:08x}", b"")


class PlatformChannel:
    """Parser for one platform-port connection: mssim signals, or swtpm CMD_SET_LOCALITY.

    The swtpm TCTI opens a new connection to port+1 for every control command. One that starts
    with CMD_SET_LOCALITY (5, no mssim platform signal) is parsed as swtpm control from then on.
    Every other connection is mssim: the codes collide (swtpm CMD_INIT 2 + u32 flags is mssim
    POWER_OFF followed by another signal; CMD_GET_CAPABILITY 1 is POWER_ON) and nothing on the
    wire tells them apart, so those swtpm commands are not served as such.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._offset = 0
        self.swtpm_control = False

    def feed(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def pending(self) -> int:
        """Bytes received but not yet consumed (a partial frame)."""
        return len(self._buf)

    def _take(self, n: int) -> None:
        del self._buf[:n]
        self._offset += n

    def next_request(self) -> ControlRequest | SwtpmControlRequest | None:
        """The next complete request, or None if more bytes are needed; ProtocolError if unknown."""
        if len(self._buf) < U32.size:
            return None
        raw = U32.unpack_from(self._buf)[0]
        if self._offset == 0 and raw == SwtpmControl.SET_LOCALITY:
            self.swtpm_control = True
        if self.swtpm_control:
            return self._next_swtpm(raw)
        if raw == MssimCommand.ACT_GET_SIGNALED:
            if len(self._buf) < 2 * U32.size:
                return None
            self._take(2 * U32.size)
            return ControlRequest(MssimCommand.ACT_GET_SIGNALED)
        if raw not in PLATFORM_SIGNALS:
            raise ProtocolError(
                f"unknown platform signal 0x{raw:08x} at stream offset {self._offset}"
            )
        self._take(U32.size)
        return ControlRequest(MssimCommand(raw))

    def _next_swtpm(self, raw: int) -> SwtpmControlRequest | None:
        if raw != SwtpmControl.SET_LOCALITY:
            raise ProtocolError(
                f"unsupported swtpm control command 0x{raw:08x} at stream offset {self._offset}"
                " (only CMD_SET_LOCALITY is served)",
                U32.pack(TPM_FAIL),  # swtpm control replies carry a TPM_RESULT
            )
        size = U32.size + SWTPM_LOCALITY.size
        if len(self._buf) < size:
            return None
        locality = int(SWTPM_LOCALITY.unpack_from(self._buf, U32.size)[0])
        self._take(size)
        return SwtpmControlRequest(SwtpmControl.SET_LOCALITY, locality)
