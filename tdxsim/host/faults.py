"""Fault injection for the untrusted host: the switches that make it misbehave on purpose, per run.

A run's switch set is a `FaultSet`, built in code or parsed from a string such as
"getquote-status=error,irq-storm=100". The switches, and what L1 sees with each:

- `vmcall-status=retry|invalid|inuse|align|N`: every GHCI call the host would answer with
  SUCCESS returns this R10 status instead.
- `getquote-status=error|unavailable|inflight|N`: the GetQuote buffer's status field gets this
  value and no quote.
- `getquote-length=long|short|N`: the answered buffer's out_len lies (past the buffer, 16 short,
  or the given value).
- `getquote-rewrite=N`: after answering, a host thread rewrites a REPORTDATA byte of the quote
  in the shared buffer N times while L1 reads it, ending tampered for odd N.
- `mapgpa-retry=N|always`: MapGPA answers RETRY with R11 = the start GPA (no progress) N times,
  or forever.
- `io-wide=1`: IO and MMIO reads return data wider than the access size (high bits set).
- `irq-spurious=V`: the host posts vector V to L1 once, at its first return to the TD, whether
  or not L1 asked for it.
- `irq-storm=N`: the host posts the notification vector (0xEC if none was set up) at each of its
  next N returns to the TD.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum

from tdxdefs.getquote import GET_QUOTE_ERROR, GET_QUOTE_IN_FLIGHT, GET_QUOTE_SERVICE_UNAVAILABLE
from tdxdefs.tdvmcall import (
    TDVMCALL_ALIGN_ERROR,
    TDVMCALL_GPA_INUSE,
    TDVMCALL_OPERAND_INVALID,
    TDVMCALL_RETRY,
)
from tdxdefs.x86 import LAST_VECTOR
from tdxsim.errors import TdxsimError

U64 = (1 << 64) - 1
FOREVER = -1
GETQUOTE_LENGTH_SHORTFALL = 16
MAPGPA_RETRY_ALWAYS = "always"


class FaultSwitch(StrEnum):
    """The switch names of a fault string, in the order the error for an unknown one lists them."""

    VMCALL_STATUS = "vmcall-status"
    GETQUOTE_STATUS = "getquote-status"
    GETQUOTE_LENGTH = "getquote-length"
    GETQUOTE_REWRITE = "getquote-rewrite"
    MAPGPA_RETRY = "mapgpa-retry"
    IO_WIDE = "io-wide"
    IRQ_SPURIOUS = "irq-spurious"
    IRQ_STORM = "irq-storm"


class GetQuoteLength(StrEnum):
    """The named lies of `getquote-length` (a number is the third kind)."""

    LONG = "long"  # out_len points past the shared buffer
    SHORT = "short"  # out_len is GETQUOTE_LENGTH_SHORTFALL bytes short of the real quote


VMCALL_STATUS_NAMES = {
    "retry": TDVMCALL_RETRY,
    "invalid": TDVMCALL_OPERAND_INVALID,
    "inuse": TDVMCALL_GPA_INUSE,
    "align": TDVMCALL_ALIGN_ERROR,
}
GETQUOTE_STATUS_NAMES = {
    "error": GET_QUOTE_ERROR,
    "unavailable": GET_QUOTE_SERVICE_UNAVAILABLE,
    "inflight": GET_QUOTE_IN_FLIGHT,
}


class FaultSpecError(TdxsimError, ValueError):
    """A fault switch string that cannot be parsed (names the switch and the value)."""


@dataclass
class FaultSet:
    """The switches of one run; None (or 0) means the host behaves."""

    vmcall_status: int | None = None
    getquote_status: int | None = None
    getquote_length: GetQuoteLength | int | None = None
    getquote_rewrite: int = 0
    mapgpa_retry: int = 0
    io_wide: bool = False
    irq_spurious: int | None = None
    irq_storm: int = 0

    def __post_init__(self) -> None:
        if self.irq_spurious is not None and not 0 <= self.irq_spurious <= LAST_VECTOR:
            raise FaultSpecError(f"irq-spurious: vector {self.irq_spurious} outside 0..255")
        if self.irq_storm < 0 or self.getquote_rewrite < 0:
            raise FaultSpecError("irq-storm and getquote-rewrite counts must not be negative")
        if self.mapgpa_retry < FOREVER:
            raise FaultSpecError(f"mapgpa-retry: {self.mapgpa_retry} is not a count or 'always'")

    @property
    def active(self) -> bool:
        """True if any switch is on."""
        return self != FaultSet()

    def describe(self) -> str:
        """The switch string that parses back to this set."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value in (None, 0, False):
                continue
            name = FaultSwitch(f.name.replace("_", "-"))
            if name == FaultSwitch.MAPGPA_RETRY and value == FOREVER:
                parts.append(f"{name}={MAPGPA_RETRY_ALWAYS}")
            elif isinstance(value, bool):
                parts.append(f"{name}=1")
            elif isinstance(value, int) and f.name.endswith("status"):
                parts.append(f"{name}={value:#x}")
            else:
                parts.append(f"{name}={value}")
        return ",".join(parts)

    @classmethod
    def parse(cls, spec: str) -> FaultSet:
        """Parse "switch=value,switch=value"; an empty string is the well-behaved host."""
        out = cls()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, sep, raw = item.partition("=")
            name, raw = name.strip(), raw.strip()
            if not sep or not raw:
                raise FaultSpecError(f"fault switch {item!r}: expected name=value")
            _apply(out, name, raw)
        out.__post_init__()
        return out


def _number(name: str, raw: str) -> int:
    try:
        value = int(raw, 0)
    except ValueError:
        raise FaultSpecError(f"fault switch {name}: {raw!r} is not a number") from None
    if not 0 <= value <= U64:
        raise FaultSpecError(f"fault switch {name}: {raw!r} does not fit 64 bits")
    return value


def _apply(out: FaultSet, name: str, raw: str) -> None:
    try:
        switch = FaultSwitch(name)
    except ValueError:
        known = ", ".join(FaultSwitch)
        raise FaultSpecError(f"unknown fault switch {name!r} (known: {known})") from None
    match switch:
        case FaultSwitch.VMCALL_STATUS:
            out.vmcall_status = VMCALL_STATUS_NAMES.get(raw) or _number(name, raw)
        case FaultSwitch.GETQUOTE_STATUS:
            out.getquote_status = GETQUOTE_STATUS_NAMES.get(raw) or _number(name, raw)
        case FaultSwitch.GETQUOTE_LENGTH:
            out.getquote_length = _length_lie(name, raw)
        case FaultSwitch.GETQUOTE_REWRITE:
            out.getquote_rewrite = _number(name, raw)
        case FaultSwitch.MAPGPA_RETRY:
            out.mapgpa_retry = FOREVER if raw == MAPGPA_RETRY_ALWAYS else _number(name, raw)
        case FaultSwitch.IO_WIDE:
            out.io_wide = bool(_number(name, raw))
        case FaultSwitch.IRQ_SPURIOUS:
            out.irq_spurious = _number(name, raw)
        case FaultSwitch.IRQ_STORM:
            out.irq_storm = _number(name, raw)


def _length_lie(name: str, raw: str) -> GetQuoteLength | int:
    try:
        return GetQuoteLength(raw)
    except ValueError:
        return _number(name, raw)
