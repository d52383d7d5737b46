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

from tdxsim.l2.exit_hook import NO_ADDRESS, ExitHook

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
_UNCOUNTED = U64(0)


def engine_handle(uc: Any) -> ctypes.c_void_p:
    """The C engine handle behind a binding's Uc object."""
    return cast(ctypes.c_void_p, uc._uch)


def raise_status(status: int) -> None:
    """The binding's error for a failed unicorn call."""
    raise cast(Any, UcError)(status)


class Runner:
    """uc_emu_start from `begin` for at most `count` instructions, as the binding's emu_start
    does it: an exception a hook raised (the binding records it and stops unicorn) is raised
    again here, after unicorn returns. The count is the exit hook's budget, not unicorn's (its
    count adds a hook of its own, and dropping that hook drops every translation)."""

    def __init__(self, uc: Any, exit_hook: ExitHook) -> None:
        self._uc = uc
        self._handle = engine_handle(uc)
        self._exit_hook = exit_hook

    def start(self, begin: int, count: int, pass_once: int = NO_ADDRESS) -> None:
        """Run L2 code from `begin`; UcError if unicorn stopped on a fault. The instruction at
        `pass_once` runs once even if it is an exit."""
        uc = self._uc
        uc._hook_exception = None
        self._exit_hook.arm(count, pass_once)
        status = _EMU_START(self._handle, U64(begin), _UNTIL, _NO_TIMEOUT, _UNCOUNTED)
        if status:
            raise_status(status)
        if uc._hook_exception is not None:
            raise uc._hook_exception
