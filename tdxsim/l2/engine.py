"""Unicorn's C entry points on the path of every L2 entry and exit, called without the
binding's argument conversions.

The binding declares argument types on its C functions, and converting them costs more than
the calls themselves (about 0.5 us of a 0.8 us register batch). These entry points take their
arguments as given: the engine handle (a c_void_p), ctypes arrays, references and c_uint64
values (passed as pointers and 64-bit values) and small Python ints (passed as C int), which is
what uc_reg_{read,write}[_batch] and uc_emu_start take on x86-64.
"""

from __future__ import annotations

import ctypes
from typing import Any, cast

from unicorn.unicorn import UcError
from unicorn.unicorn_py3.unicorn import uclib

_UNCHECKED = ctypes.CFUNCTYPE(ctypes.c_int)
U64 = ctypes.c_uint64
RUN_FOREVER = (1 << 64) - 1  # emu_start's `until`: never reached (unicorn stops at its exits)


def _unchecked(name: str) -> Any:
    return _UNCHECKED(cast(int, ctypes.cast(getattr(uclib, name), ctypes.c_void_p).value))


REG_READ_BATCH = _unchecked("uc_reg_read_batch")
REG_WRITE_BATCH = _unchecked("uc_reg_write_batch")
REG_READ = _unchecked("uc_reg_read")
REG_WRITE = _unchecked("uc_reg_write")
_EMU_START = _unchecked("uc_emu_start")
_UNTIL = U64(RUN_FOREVER)
_NO_TIMEOUT = U64(0)


def engine_handle(uc: Any) -> ctypes.c_void_p:
    """The C engine handle behind a binding's Uc object."""
    return cast(ctypes.c_void_p, uc._uch)


def raise_status(status: int) -> None:
    """The binding's error for a failed unicorn call."""
    raise cast(Any, UcError)(status)


class Runner:
    """uc_emu_start from `begin` for at most `count` instructions, as the binding's emu_start
    does it: an exception a hook raised (the binding records it and stops unicorn) is raised
    again here, after unicorn returns."""

    def __init__(self, uc: Any) -> None:
        self._uc = uc
        self._handle = engine_handle(uc)

    def start(self, begin: int, count: int) -> None:
        """Run L2 code from `begin`; UcError if unicorn stopped on a fault."""
        uc = self._uc
        uc._hook_exception = None
        status = _EMU_START(self._handle, U64(begin), _UNTIL, _NO_TIMEOUT, U64(count))
        if status:
            raise_status(status)
        if uc._hook_exception is not None:
            raise uc._hook_exception
