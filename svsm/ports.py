"""The IO ports of the L2 contract (l2-firmware/README.md): COM1 at 0x3F8 as a console whose
lines L1 forwards to the host log as `L2[n]| ...`, and QEMU's isa-debug-exit port at 0xF4, where
a byte V ends that L2 with exit code V. Any other port is refused (#GP into the L2).

A console line is bounded: an L2 that never writes a newline gets its line cut at
`MAX_LINE` bytes, so L2 output can never grow L1's memory (L1 keeps only the last KEPT_LINES).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

COM1_DATA = 0x3F8
COM1_LINE_STATUS = 0x3FD
LSR_TRANSMIT_EMPTY = 0x60  # THRE and TEMT: the UART is always ready to send
DEBUG_EXIT_PORT = 0xF4
MAX_LINE = 512
KEPT_LINES = 256  # L1 keeps the last lines for its summary; every line goes to the host log


@dataclass
class L2Console:
    """COM1 of L2 VM `vm`: bytes gathered into lines, each line handed to `emit` once."""

    vm: int
    emit: Callable[[str], None]
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=KEPT_LINES))  # the last ones
    _pending: bytearray = field(default_factory=bytearray)

    def write(self, byte: int) -> None:
        """One byte written to the data register."""
        if byte == ord("\n") or len(self._pending) >= MAX_LINE:
            self.flush()
            if byte == ord("\n"):
                return
        self._pending.append(byte & 0xFF)

    def flush(self) -> None:
        """Emit what is pending as a line (at a newline, a full line, or the L2's end)."""
        if not self._pending:
            return
        text = self._pending.decode("utf-8", errors="replace")
        text = "".join(c if c.isprintable() else "?" for c in text)
        self._pending.clear()
        self.lines.append(text)
        self.emit(f"L2[{self.vm}]| {text}")
