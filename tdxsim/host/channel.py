"""The host channel between the host process and the TD process: small fixed-layout messages.

Transport: an AF_UNIX SOCK_SEQPACKET socket pair, one datagram per message, so no framing and no
pickle. Every message starts with `MsgHeader` (type u16, reserved u16, payload length u32); the
payload layout is fixed per type (the `*_FORMAT` structs below). The TD memory memfd travels once,
with CREATED, as SCM_RIGHTS ancillary data.

Host -> TD (host-side calls; each gets REPLY or the named answer):
CREATE, ADD_PAGE, EXTEND, AUG_REST, FINALIZE (-> FINALIZED), ENTER (-> EXIT, DONE or FAILED),
AUG, CONVERT, SHUTDOWN. ENTER carries the host interrupts to post before the TD resumes (vCPU,
vector pairs after its registers), as a VMM posts them on its way into the guest, so a TD exit
stays one message each way.
TD -> host: REPLY, CREATED, FINALIZED, EXIT (a TD exit: TDVMCALL or another exit kind, with the
registers), DONE (L1 returned), FAILED (L1 or the TD process failed).
"""

from __future__ import annotations

import array
import socket
import struct
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from tdxsim.errors import TdxsimError
from tdxsim.host.spin import Spinner
from tdxsim.module.host_interface import TdExitKind
from tdxsim.module.registers import Regs

MAX_MESSAGE = 64 * 1024
MAX_TEXT = MAX_MESSAGE - 64
GPR_COUNT = 16
MAC_KEY_SIZE = 32
MRTD_SIZE = 48


class MsgType(IntEnum):
    """Message types on the channel."""

    CREATE = 1
    ADD_PAGE = 2
    EXTEND = 3
    AUG_REST = 4
    FINALIZE = 5
    ENTER = 6
    AUG = 7
    CONVERT = 8
    SHUTDOWN = 10
    REPLY = 64
    CREATED = 65
    FINALIZED = 66
    EXIT = 67
    DONE = 68
    FAILED = 69


class ExitKind(IntEnum):
    """TD exit kinds on the wire in EXIT (each `TdExitKind`, plus TDVMCALL)."""

    TDVMCALL = 0
    EPT_VIOLATION = 1
    L2_HOST_ROUTED = 2
    TIMER = 3


EXIT_KIND_NAMES: dict[int, TdExitKind] = {
    ExitKind.EPT_VIOLATION: TdExitKind.EPT_VIOLATION,
    ExitKind.L2_HOST_ROUTED: TdExitKind.L2_HOST_ROUTED,
    ExitKind.TIMER: TdExitKind.TIMER,
}
EXIT_KINDS = {name: kind for kind, name in EXIT_KIND_NAMES.items()}

HEADER = struct.Struct("<HHI")  # MsgHeader: type, reserved, payload length
# CREATE: gpaw, num_l2_vms, max_vcpus, region count, attributes, xfam, instruction budget,
# report MAC key; then `REGION` per region.
CREATE_FORMAT = struct.Struct(f"<IIIIQQQ{MAC_KEY_SIZE}s")
REGION = struct.Struct("<QQQ")  # gpa, size, memfd offset (offset ignored in CREATE)
ADD_PAGE_FORMAT = struct.Struct("<Q")  # gpa; then up to one page of data
EXTEND_FORMAT = struct.Struct("<QI")  # gpa, number of 256-byte chunks
FINALIZE_FORMAT = struct.Struct("<QQ")  # L1 image GPA, image size in bytes
FINALIZED_FORMAT = struct.Struct(f"<{MRTD_SIZE}s")
ENTER_FORMAT = struct.Struct(f"<II{GPR_COUNT}Q")  # vcpu, flags, GPRs (the TDVMCALL answer)
# after ENTER_FORMAT: zero or more interrupts to post before the TD resumes
INTERRUPT_FORMAT = struct.Struct("<II")  # vcpu, vector
ENTER_FIXED = 1  # the host fixed the cause of the TD exit (TdExit answered True)
AUG_FORMAT = struct.Struct("<Q")
CONVERT_FORMAT = struct.Struct("<QQI")  # private GPA, page count, 1 = to shared
REPLY_FORMAT = struct.Struct("<I")  # 0 = done, 1 = refused; then a UTF-8 error text
REPLY_OK, REPLY_REFUSED = 0, 1
# EXIT: kind, vcpu, vm, eeq type, exit reason, gpa, qualification, GPRs
EXIT_FORMAT = struct.Struct(f"<IIIIIQQ{GPR_COUNT}Q")
DONE_FORMAT = struct.Struct("<q")  # status; then L1's result bytes
# Whole-message layouts of the hot path (header and fields in one struct, one pack per message).
ENTER_MSG = struct.Struct(HEADER.format + ENTER_FORMAT.format[1:])
EXIT_MSG = struct.Struct(HEADER.format + EXIT_FORMAT.format[1:])
ENTER_GPRS_AT = 5  # index of RAX in ENTER_MSG's fields
EXIT_GPRS_AT = 10  # index of RAX in EXIT_MSG's fields


class ChannelClosed(TdxsimError, ConnectionError):
    """The other side closed the channel (its process ended)."""


class ChannelError(TdxsimError, ValueError):
    """A malformed message (names the type and what was wrong)."""


@dataclass(frozen=True)
class Message:
    """One received message: type and payload."""

    type: MsgType
    payload: bytes

    def fields(self, fmt: struct.Struct) -> tuple[int | bytes, ...]:
        """Unpack the fixed part of the payload."""
        if len(self.payload) < fmt.size:
            raise ChannelError(
                f"{self.type.name}: payload of {len(self.payload)} bytes, need {fmt.size}"
            )
        return fmt.unpack_from(self.payload)

    def rest(self, fmt: struct.Struct) -> bytes:
        """The variable part after the fixed fields."""
        return self.payload[fmt.size :]


class Channel:
    """One end of the socket pair."""

    def __init__(self, sock: socket.socket, spin_window_ns: int | None = None) -> None:
        self.sock = sock
        self.spinner = Spinner(sock.fileno(), spin_window_ns)

    @staticmethod
    def pair() -> tuple[socket.socket, socket.socket]:
        """A connected SOCK_SEQPACKET pair (host end, TD end)."""
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def send(self, msg_type: MsgType, payload: bytes = b"", fds: list[int] | None = None) -> None:
        data = HEADER.pack(msg_type, 0, len(payload)) + payload
        if len(data) > MAX_MESSAGE:
            raise ChannelError(f"{msg_type.name}: {len(data)} bytes exceed {MAX_MESSAGE}")
        try:
            if fds:
                self.sock.sendmsg(
                    [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
            else:
                self.sock.send(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed(f"sending {msg_type.name}: peer gone ({exc})") from exc

    def recv(self) -> Message:
        return self.parse(self.recv_raw())

    def recv_raw(self, wait: Hashable = None) -> bytes:
        """One message's bytes, unparsed (the hot path decodes ENTER/EXIT itself). `wait` names
        the kind of wait, whose spin window (tdxsim.host.spin) decides whether to poll first."""
        window = self.spinner.window(wait)
        start = time.perf_counter_ns()
        self.spinner.spin(window, start)
        data = self.recv_now()
        window.waited(time.perf_counter_ns() - start)
        return data

    def recv_now(self) -> bytes:
        """One message's bytes, blocking until it is there; ChannelClosed if the peer is gone."""
        try:
            data = self.sock.recv(MAX_MESSAGE)
        except ConnectionResetError as exc:
            raise ChannelClosed(f"peer gone ({exc})") from exc
        if not data:
            raise ChannelClosed("peer closed the channel")
        return data

    def recv_with_fds(self) -> tuple[Message, list[int]]:
        fds = array.array("i")
        data, ancdata, _flags, _addr = self.sock.recvmsg(
            MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize)
        )
        for level, kind, raw in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(raw[: len(raw) - len(raw) % fds.itemsize])
        return self.parse(data), list(fds)

    @staticmethod
    def parse(data: bytes) -> Message:
        """Check the header and split a message."""
        if not data:
            raise ChannelClosed("peer closed the channel")
        if len(data) < HEADER.size:
            raise ChannelError(f"message of {len(data)} bytes is shorter than its header")
        msg_type, _reserved, length = HEADER.unpack_from(data)
        if length != len(data) - HEADER.size:
            raise ChannelError(
                f"message type {msg_type}: length field {length}, payload {len(data) - HEADER.size}"
            )
        try:
            kind = MsgType(msg_type)
        except ValueError:
            raise ChannelError(f"unknown message type {msg_type}") from None
        return Message(kind, data[HEADER.size :])

    # --- typed helpers for the hot path ------------------------------------------------------
    def _send_raw(self, data: bytes, what: str) -> None:
        try:
            self.sock.send(data)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ChannelClosed(f"sending {what}: peer gone ({exc})") from exc

    def send_enter(
        self,
        regs: Regs | None,
        fixed: bool = False,
        vcpu: int = 0,
        interrupts: Sequence[tuple[int, int]] = (),
    ) -> None:
        """ENTER: resume the TD, with the TDVMCALL answer in `regs` and the (vCPU, vector)
        interrupts to post first."""
        values = regs.as_list() if regs is not None else [0] * GPR_COUNT
        size = ENTER_FORMAT.size + INTERRUPT_FORMAT.size * len(interrupts)
        data = ENTER_MSG.pack(MsgType.ENTER, 0, size, vcpu, ENTER_FIXED if fixed else 0, *values)
        if interrupts:
            data += b"".join(INTERRUPT_FORMAT.pack(c, v) for c, v in interrupts)
        self._send_raw(data, "ENTER")

    def send_exit(
        self,
        kind: int,
        values: list[int],
        vm: int = 0,
        eeq: int = 0,
        reason: int = 0,
        gpa: int = 0,
        qualification: int = 0,
    ) -> None:
        """EXIT: a TD exit to the host, with the GPRs of a TDVMCALL."""
        self._send_raw(
            EXIT_MSG.pack(
                MsgType.EXIT,
                0,
                EXIT_FORMAT.size,
                kind,
                0,
                vm,
                eeq,
                reason,
                gpa,
                qualification,
                *values,
            ),
            "EXIT",
        )

    def send_reply(self, ok: bool, text: str = "") -> None:
        self.send(
            MsgType.REPLY,
            REPLY_FORMAT.pack(REPLY_OK if ok else REPLY_REFUSED) + text.encode()[:MAX_TEXT],
        )

    def close(self) -> None:
        self.sock.close()


def regs_of(values: tuple[int | bytes, ...]) -> Regs:
    """Regs from the trailing 16 GPR fields of an unpacked ENTER or EXIT."""
    return Regs.from_list([int(v) for v in values[-GPR_COUNT:]])
