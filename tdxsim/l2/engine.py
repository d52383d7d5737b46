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
from collections.abc import Callable
from typing import Any, cast

from unicorn import UC_HOOK_TLB_FILL
from unicorn.unicorn import UcError
from unicorn.unicorn_py3.unicorn import uclib

from tdxsim.l2.exit_hook import HOOK_EVERY_ADDRESS, NO_ADDRESS, ExitHook, StopReason

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
STOP_NONE = int(StopReason.NONE)


def engine_handle(uc: Any) -> ctypes.c_void_p:
    """The C engine handle behind a binding's Uc object."""
    return cast(ctypes.c_void_p, uc._uch)


class TlbEntry(ctypes.Structure):
    """struct uc_tlb_entry: what a TLB-fill hook answers (the GPA of the page and its
    permissions)."""

    _fields_ = (("paddr", ctypes.c_uint64), ("perms", ctypes.c_uint32))


# uc_cb_tlbfill_t and uc_cb_eventmem_t, with the engine and the entry as plain addresses
TLB_FILL_HOOK = ctypes.CFUNCTYPE(
    ctypes.c_bool, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p
)
MEMORY_FAULT_HOOK = ctypes.CFUNCTYPE(
    ctypes.c_bool,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_uint64,
    ctypes.c_int,
    ctypes.c_int64,
    ctypes.c_void_p,
)


def _hook_failed(uc: Any, exc: BaseException) -> bool:
    """What the binding does when a hook raises: keep the first exception for emu_start to
    raise, and stop unicorn."""
    if uc._hook_exception is None:
        uc._hook_exception = exc
    uc.emu_stop()
    return False


def _add_hook(uc: Any, kind: int, function: Any) -> None:
    handle = ctypes.c_size_t()
    begin, end = HOOK_EVERY_ADDRESS
    status = uclib.uc_hook_add(
        uc._uch, ctypes.byref(handle), kind, function, None, U64(begin), U64(end)
    )
    if status:
        raise_status(status)
    uc._callbacks[handle.value] = function  # alive as long as the engine, as the binding's


def add_tlb_fill_hook(uc: Any, callback: Callable[[int, int, TlbEntry], bool]) -> None:
    """UC_HOOK_TLB_FILL calling `callback(vaddr, access, entry)` with one Python layer: the
    binding's adds two calls and a pointer object on every fill."""
    from_address = TlbEntry.from_address

    def hook(_engine: int, vaddr: int, access: int, entry: int, _data: int) -> bool:
        try:
            return callback(vaddr, access, from_address(entry))
        except BaseException as exc:  # raised again by emu_start, as the binding does
            return _hook_failed(uc, exc)

    _add_hook(uc, UC_HOOK_TLB_FILL, TLB_FILL_HOOK(hook))


def add_memory_fault_hook(
    uc: Any, kinds: int, callback: Callable[[int, int, int, int], bool]
) -> None:
    """Unmapped and protection memory-fault hooks (UC_HOOK_MEM_*_UNMAPPED, *_PROT) calling
    `callback(access, address, size, value)` with one Python layer, as `add_tlb_fill_hook`."""

    def hook(_engine: int, access: int, address: int, size: int, value: int, _data: int) -> bool:
        try:
            return callback(access, address, size, value)
        except BaseException as exc:  # raised again by emu_start, as the binding does
            return _hook_failed(uc, exc)

    _add_hook(uc, kinds, MEMORY_FAULT_HOOK(hook))


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
        self._exit_hook = exit_hook  # keeps the exit arrays its state points to alive
        self._hook_state = exit_hook.state

    def run(self, begin: int, count: int, pass_once: int = NO_ADDRESS) -> int:
        """Run L2 code from `begin`; unicorn's status (0, or the error of a fault), or the
        exception a hook raised. The run loop takes the status as a value: an L2 access the EPT
        refuses ends a run with a fault, and a UcError made and caught for each of them costs
        more than the check. The instruction at `pass_once` runs once even if it is an exit."""
        uc = self._uc
        uc._hook_exception = None
        state = self._hook_state  # the exit hook's budget and pass-once address for this run
        state.budget = count
        state.started = 0
        state.reason = STOP_NONE
        state.pass_once = pass_once
        status: int = _EMU_START(self._handle, U64(begin), _UNTIL, _NO_TIMEOUT, _UNCOUNTED)
        if status:
            return status  # a fault comes first, as with the binding's emu_start
        if uc._hook_exception is not None:
            raise uc._hook_exception
        return 0

    def start(self, begin: int, count: int, pass_once: int = NO_ADDRESS) -> None:
        """`run`, with a fault raised as the binding's UcError."""
        status = self.run(begin, count, pass_once)
        if status:
            raise_status(status)
