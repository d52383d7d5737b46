"""Unicorn's C entry points called without the binding's conversions (tdxsim.l2.engine and the
register blocks): the same results and errors as the binding's own calls; and the native exit
hook that stops unicorn before exits and at the end of a run's budget (tdxsim.l2.exit_hook)."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from unicorn import (
    UC_ARCH_X86,
    UC_ERR_EXCEPTION,
    UC_ERR_FETCH_UNMAPPED,
    UC_ERR_READ_UNMAPPED,
    UC_HOOK_CODE,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_MEM_FETCH,
    UC_MEM_READ,
    UC_MEM_READ_UNMAPPED,
    UC_MODE_64,
    UC_PROT_ALL,
    UC_TLB_VIRTUAL,
)
from unicorn import x86_const as X
from unicorn.unicorn import Uc, UcError

from tdxsim.errors import TdxsimError
from tdxsim.l2 import exit_hook
from tdxsim.l2.engine import Runner, TlbEntry, add_memory_fault_hook, add_tlb_fill_hook
from tdxsim.l2.exit_hook import ExitHook, ExitHookState
from tdxsim.l2.registers import UC_GPRS, FastRegs, RegisterBlock

UNICORN: Any = Uc  # the binding is untyped
CODE = 0x1000
NOPS_THEN_HLT = b"\x90\x90\x90\xf4"


def engine() -> Any:
    uc = UNICORN(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(CODE, 0x1000)
    uc.mem_write(CODE, NOPS_THEN_HLT)
    return uc


def runner(uc: Any) -> tuple[Runner, ExitHook]:
    hook = ExitHook(uc)
    return Runner(uc, hook), hook


def rip(uc: Any) -> int:
    return int(uc.reg_read(X.UC_X86_REG_RIP))


def test_runner_runs_the_given_number_of_instructions() -> None:
    uc = engine()
    run, hook = runner(uc)
    run.start(CODE, 2)
    assert rip(uc) == CODE + 2
    assert hook.budget_used_up


def test_exit_hook_stops_before_an_exit_and_passes_it_once_when_asked() -> None:
    uc = engine()
    run, hook = runner(uc)
    hook.set_exits({CODE + 2})
    run.start(CODE, 100)
    assert rip(uc) == CODE + 2 and hook.stopped_at_exit(CODE + 2)
    run.start(CODE + 2, 100)  # an exit stops again where it starts
    assert rip(uc) == CODE + 2 and hook.stopped_at_exit(CODE + 2)
    run.start(CODE + 2, 1, pass_once=CODE + 2)  # runs the one instruction
    assert rip(uc) == CODE + 3 and hook.budget_used_up and not hook.stopped_at_exit(CODE + 3)


def test_exit_hook_changes_take_effect_in_code_already_translated() -> None:
    uc = engine()
    run, hook = runner(uc)
    hook.set_exits({CODE + 2})
    run.start(CODE, 100)  # translates the block from CODE
    hook.set_exits({CODE + 1})
    run.start(CODE, 100)
    assert rip(uc) == CODE + 1 and hook.stopped_at_exit(CODE + 1)
    hook.set_exits(set())
    run.start(CODE, 100)  # runs to the HLT, which ends unicorn's run
    assert rip(uc) == CODE + 4 and not hook.stopped_at_exit(CODE + 4) and not hook.budget_used_up
    hook.set_exits({CODE + 1})
    hook.set_enabled(False)  # only the budget stops
    run.start(CODE, 2)
    assert rip(uc) == CODE + 2 and hook.budget_used_up


def test_exit_hook_without_its_library_names_it_and_the_setup_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(exit_hook.LIBRARY_ENV, "/nonexistent/libtdxsim_exit_hook.so")
    exit_hook._callback.cache_clear()
    try:
        with pytest.raises(TdxsimError, match=r"/nonexistent/libtdxsim_exit_hook\.so.*tdp setup"):
            ExitHook(engine())
    finally:
        exit_hook._callback.cache_clear()


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (
            ("const uint64_t tdxsim_exit_hook_layout", "static const uint64_t unexported"),
            "not exported",
        ),
        (("    uint64_t budget;", "    uint64_t budget;\n    uint64_t added;"), "a field added"),
    ],
    ids=["layout-not-exported", "layout-changed"],
)
def test_exit_hook_library_built_from_another_source_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, change: tuple[str, str], found: str
) -> None:
    source = exit_hook.SOURCE.read_text()
    assert change[0] in source
    (tmp_path / "old.c").write_text(source.replace(*change))
    library = tmp_path / "libold.so"
    subprocess.run(
        [*exit_hook.GCC, "-Wno-unused-const-variable", "-o", str(library), str(tmp_path / "old.c")],
        check=True,
    )
    monkeypatch.setenv(exit_hook.LIBRARY_ENV, str(library))
    size, reason = ctypes.sizeof(ExitHookState), ExitHookState.reason.offset
    if found == "a field added":  # 8 more bytes before `reason`, so both figures move
        found = re.escape(f"({size + 8}, {reason + 8}), not ({size}, {reason})")
    exit_hook._callback.cache_clear()
    try:
        with pytest.raises(
            TdxsimError, match=rf"libold\.so was built from another source.*{found}.*tdp setup"
        ):
            ExitHook(engine())
    finally:
        exit_hook._callback.cache_clear()


def test_runner_raises_what_a_hook_raised() -> None:
    uc = engine()

    def hook(_uc: Any, address: int, _size: int, _data: object) -> None:
        if address == CODE + 1:
            raise ValueError(f"hook at {address:#x}")

    uc.hook_add(UC_HOOK_CODE, hook)
    with pytest.raises(ValueError, match="hook at 0x1001"):
        runner(uc)[0].start(CODE, 3)


def test_runner_raises_unicorns_error_on_a_fault() -> None:
    uc = engine()
    with pytest.raises(UcError):
        runner(uc)[0].start(0x9000, 1)  # nothing mapped there


def test_register_block_and_single_registers_match_the_binding() -> None:
    uc = engine()
    block = RegisterBlock(uc, UC_GPRS)
    values = [(i + 1) * 0x0101_0000_0000_0001 for i in range(len(UC_GPRS))]
    block.write(values)
    assert [uc.reg_read(r) for r in UC_GPRS] == values
    assert block.read() == values
    regs = FastRegs(uc)
    regs.write(X.UC_X86_REG_RAX, (1 << 64) + 5)  # truncated to 64 bits
    assert uc.reg_read(X.UC_X86_REG_RAX) == 5
    uc.reg_write(X.UC_X86_REG_RBX, 0xFEED)
    assert regs.read(X.UC_X86_REG_RBX) == 0xFEED


def test_exit_hook_library_is_compiled_when_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    library = tmp_path / "native" / "libtdxsim_exit_hook.so"
    monkeypatch.delenv(exit_hook.LIBRARY_ENV, raising=False)
    monkeypatch.setattr(exit_hook, "DEFAULT_LIBRARY", library)
    exit_hook._callback.cache_clear()
    try:
        uc = engine()
        run = Runner(uc, ExitHook(uc))
        assert library.exists()  # compiled from native/tdxsim_exit_hook.c
        run.start(CODE, 2)
        assert rip(uc) == CODE + 2
    finally:
        exit_hook._callback.cache_clear()


def test_runner_run_returns_unicorns_status_instead_of_raising() -> None:
    uc = engine()
    run, _hook = runner(uc)
    assert run.run(0x9000, 1) == UC_ERR_FETCH_UNMAPPED  # nothing mapped there
    assert run.run(CODE, 2) == 0 and rip(uc) == CODE + 2


def test_direct_tlb_fill_and_fault_hooks_see_what_the_bindings_do() -> None:
    uc = engine()
    uc.mem_write(CODE, b"\x8b\x04\x25\x00\x90\x00\x00")  # mov eax, [0x9000]: nothing mapped
    fills: list[tuple[int, int]] = []
    faults: list[tuple[int, int, int]] = []

    def fill(vaddr: int, access: int, entry: TlbEntry) -> bool:
        fills.append((vaddr, access))
        entry.paddr = vaddr  # identity
        entry.perms = UC_PROT_ALL
        return True

    def fault(access: int, address: int, size: int, _value: int) -> bool:
        faults.append((access, address, size))
        return False

    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    add_tlb_fill_hook(uc, fill)
    add_memory_fault_hook(uc, UC_HOOK_MEM_READ_UNMAPPED, fault)
    assert runner(uc)[0].run(CODE, 1) == UC_ERR_READ_UNMAPPED
    assert (CODE, UC_MEM_FETCH) in fills and (0x9000, UC_MEM_READ) in fills
    assert faults == [(UC_MEM_READ_UNMAPPED, 0x9000, 4)]


def test_an_exception_in_a_direct_hook_stops_unicorn_and_is_kept_as_the_binding_keeps_it() -> None:
    uc = engine()

    def fill(vaddr: int, _access: int, entry: TlbEntry) -> bool:
        raise ValueError(f"fill at {vaddr:#x}")

    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    add_tlb_fill_hook(uc, fill)
    run, _hook = runner(uc)
    assert run.run(CODE, 1) == UC_ERR_EXCEPTION  # the fill refused: a fault comes first
    assert isinstance(uc._hook_exception, ValueError)
    with pytest.raises(UcError):
        run.start(CODE, 1)


def test_an_address_sharing_an_exits_low_bits_does_not_stop() -> None:
    # The hook skips its search where no exit has an address's low 16 bits: an instruction
    # with the same low bits as an exit elsewhere must run on, and the exit must still stop.
    uc = engine()
    uc.mem_map(CODE + 0x10000, 0x1000)
    uc.mem_write(CODE + 0x10000, NOPS_THEN_HLT)
    run, hook = runner(uc)
    hook.set_exits({CODE + 0x10000 + 2})  # its low 16 bits are those of CODE + 2
    run.start(CODE, 100)
    assert rip(uc) == CODE + 4 and not hook.stopped_at_exit(CODE + 2)  # ran to the HLT
    run.start(CODE + 0x10000, 100)
    assert rip(uc) == CODE + 0x10000 + 2 and hook.stopped_at_exit(CODE + 0x10000 + 2)
