"""The native L2 exit hook (native/tdxsim_exit_hook.c): unicorn stops before each instruction that
may exit, and after a budget of instructions, checked in C when each instruction starts.

Unicorn's own exit addresses are compiled into its translations and make it drop, after every
run, each translation next to an exit: L2's hot code was translated again after every L2 exit
(about 15 us of a 17 us run here). The hook keeps translations across runs, so an exit set can
change with no translation dropped.

Built by `./tdp setup` (scripts/bootstrap.sh) with Debian's gcc into build/native/, or here on
first use when it is missing or older than its source (a checkout copied to a remote host whose
setup was done elsewhere); set TDXSIM_EXIT_HOOK to use another library as it is.
"""

from __future__ import annotations

import ctypes
import enum
import os
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from unicorn import UC_HOOK_CODE
from unicorn.unicorn_py3.unicorn import uclib

from tdxsim.errors import TdxsimError

LIBRARY_ENV = "TDXSIM_EXIT_HOOK"
ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "native" / "tdxsim_exit_hook.c"
DEFAULT_LIBRARY = ROOT / "build" / "native" / "libtdxsim_exit_hook.so"
GCC = ("gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC")
NO_ADDRESS = (1 << 64) - 1
FILTER_BITS = 16  # FILTER_BITS in native/tdxsim_exit_hook.c
FILTER_MASK = (1 << FILTER_BITS) - 1
FILTER_SIZE = (1 << FILTER_BITS) // 8
HOOK_EVERY_ADDRESS = (1, 0)  # unicorn's begin > end: the hook runs for every address


class StopReason(enum.IntEnum):
    """enum stop_reason (native/tdxsim_exit_hook.c)."""

    NONE = 0
    EXIT = 1
    BUDGET = 2


class ExitHookState(ctypes.Structure):
    """struct exit_hook (native/tdxsim_exit_hook.c)."""

    _fields_ = [
        ("emu_stop", ctypes.c_void_p),
        ("exits", ctypes.POINTER(ctypes.c_uint64)),
        ("exit_count", ctypes.c_uint64),
        ("filter", ctypes.POINTER(ctypes.c_uint8)),
        ("budget", ctypes.c_uint64),
        ("started", ctypes.c_uint64),
        ("pass_once", ctypes.c_uint64),
        ("stopped_at", ctypes.c_uint64),
        ("reason", ctypes.c_int32),
        ("exits_enabled", ctypes.c_int32),
    ]


assert ctypes.sizeof(ExitHookState) == 8 * 8 + 2 * 4


def library_path() -> Path:
    """Where the native library is loaded from."""
    return Path(os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY)


def library_status() -> str:
    """The library's path, or why it cannot be loaded (for `invoke setup`)."""
    try:
        _callback()
    except TdxsimError as exc:
        return f"missing: {exc}"
    return str(library_path())


def _build(library: Path) -> None:
    """Compile the library from its source if it is missing or older (atomically: processes
    starting together may all build it)."""
    try:
        if library.stat().st_mtime >= SOURCE.stat().st_mtime:
            return
    except FileNotFoundError:
        if not SOURCE.exists():
            return  # nothing to build from: loading names the missing library
    library.parent.mkdir(parents=True, exist_ok=True)
    partial = library.with_name(f"{library.name}.{os.getpid()}.tmp")
    try:
        result = subprocess.run(
            [*GCC, "-o", str(partial), str(SOURCE)], capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise TdxsimError(f"cannot compile {SOURCE} into {library}: {exc}") from exc
    if result.returncode:
        partial.unlink(missing_ok=True)
        raise TdxsimError(f"gcc could not compile {SOURCE}: {result.stderr.strip()[-500:]}")
    os.replace(partial, library)


@cache
def _callback() -> int:
    """Address of tdxsim_exit_hook in the native library."""
    library = library_path()
    if not os.environ.get(LIBRARY_ENV):
        _build(library)
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as exc:
        raise TdxsimError(
            f"the L2 exit hook library {library} cannot be loaded ({exc}); "
            "run ./tdp setup, which compiles it from native/tdxsim_exit_hook.c"
        ) from exc
    expected = (ctypes.sizeof(ExitHookState), ExitHookState.reason.offset)
    try:
        layout = tuple((ctypes.c_uint64 * 2).in_dll(lib, "tdxsim_exit_hook_layout"))
    except ValueError:
        layout = ()
    if layout != expected:
        raise TdxsimError(
            f"the L2 exit hook library {library} was built from another source (its state "
            f"layout (size, offset of reason) is {layout or 'not exported'}, not {expected}); "
            "run ./tdp setup, which compiles it from native/tdxsim_exit_hook.c"
        )
    address = ctypes.cast(lib.tdxsim_exit_hook, ctypes.c_void_p).value
    assert address is not None
    return address


class ExitHook:
    """One unicorn instance's exit hook: the exit set, the per-run budget and why it stopped."""

    def __init__(self, uc: Any) -> None:
        self.state = ExitHookState()
        self.state.emu_stop = ctypes.cast(uclib.uc_emu_stop, ctypes.c_void_p).value
        self.state.pass_once = NO_ADDRESS
        self.state.exits_enabled = 1
        self._exits = (ctypes.c_uint64 * 0)()  # kept alive while unicorn reads them
        self._filter: ctypes.Array[ctypes.c_uint8] | None = None
        handle = ctypes.c_ulong()  # uc_hook: the binding declares it unsigned long
        begin, end = HOOK_EVERY_ADDRESS
        status = uclib.uc_hook_add(
            uc._uch,
            ctypes.byref(handle),
            UC_HOOK_CODE,
            ctypes.c_void_p(_callback()),
            ctypes.cast(ctypes.pointer(self.state), ctypes.c_void_p),
            begin,
            end,
        )
        if status:
            raise TdxsimError(f"unicorn refused the L2 exit hook (uc_hook_add status {status})")

    def set_exits(self, exits: Iterable[int]) -> None:
        """Stop before these addresses from the next instruction on. The hook runs before
        every instruction: a bitmap of the exits' low address bits lets it skip the search
        for almost all of them."""
        ordered = sorted(exits)
        array = (ctypes.c_uint64 * len(ordered))(*ordered)
        bits = bytearray(FILTER_SIZE)
        for address in ordered:
            bit = address & FILTER_MASK
            bits[bit >> 3] |= 1 << (bit & 7)
        filter_ = (ctypes.c_uint8 * FILTER_SIZE).from_buffer(bits)
        state = self.state
        state.exit_count = 0  # no exit is missed or searched for in a half-made set
        state.exits = ctypes.cast(array, ctypes.POINTER(ctypes.c_uint64))
        state.filter = ctypes.cast(filter_, ctypes.POINTER(ctypes.c_uint8))
        state.exit_count = len(ordered)
        self._exits = array
        self._filter = filter_

    def set_enabled(self, enabled: bool) -> None:
        """Exits on, or off (then only the budget stops unicorn)."""
        self.state.exits_enabled = int(enabled)

    def stopped_at_exit(self, rip: int) -> bool:
        """The last run stopped before `rip` because it is an exit."""
        state = self.state
        return bool(state.reason == StopReason.EXIT and state.stopped_at == rip)

    @property
    def budget_used_up(self) -> bool:
        return bool(self.state.reason == StopReason.BUDGET)
