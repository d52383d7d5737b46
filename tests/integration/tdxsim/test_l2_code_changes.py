"""Exiting instructions in code that changes: written by L2 itself while it runs, written by L1
between entries, reached through a new mapping, or crossing a page boundary. Unicorn translates
code once; each of these must still stop before the exiting instruction with the right exit."""

from __future__ import annotations

import itertools

import pytest

from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS
from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.vmcs import ExitReason
from tdxsim.l2 import engine
from tdxsim.l2.exit_hook import NO_ADDRESS
from tdxsim.testing import L2Context, TdHarness, assemble

CODE = 0x10000
STACK_TOP = 0x21000
CPUID = b"\x0f\xa2"
RWX = ATTR_R | ATTR_W | ATTR_XS | ATTR_VALID

# Runs a loop through two NOPs (so that code is translated), then overwrites them with CPUID
# and runs the loop again: the second pass must exit at CPUID.
SELF_PATCHING = """
    mov ecx, 50
loop_top:
patched:
    nop
    nop
    dec ecx
    jnz loop_top
    cmp ebx, 1
    je done
    mov ebx, 1
    lea rax, [rip + patched]
    mov word ptr [rax], 0xa20f
    mov ecx, 50
    jmp loop_top
done:
    hlt
"""


@pytest.fixture
def l2(h: TdHarness) -> L2Context:
    ctx = h.l2(vm=1)
    h.set_alias(1, 0x20000, RWX)
    return ctx


def patched_offset() -> int:
    code = assemble(SELF_PATCHING, CODE)
    at = code.index(b"\x90\x90\xff\xc9")  # nop; nop; dec ecx
    return at


def test_code_l2_writes_over_translated_code_exits(l2: L2Context) -> None:
    l2.load(CODE, assemble(SELF_PATCHING, CODE))
    ex = l2.enter(rip=CODE, rsp=STACK_TOP)
    assert ex.reason == ExitReason.CPUID
    assert ex.rip == CODE + patched_offset()
    assert ex.instr_len == len(CPUID)
    assert ex.guest.rbx == 1 and ex.guest.rcx == 50  # the second pass, before CPUID ran


def test_code_l2_writes_keeps_exiting_after_l1_resumes(l2: L2Context) -> None:
    l2.load(CODE, assemble(SELF_PATCHING, CODE))
    ex = l2.enter(rip=CODE, rsp=STACK_TOP)
    for remaining in (50, 49, 48):
        assert ex.reason == ExitReason.CPUID and ex.guest.rcx == remaining
        l2.skip(ex)
        ex = l2.enter()
        assert ex.reason == ExitReason.CPUID  # each pass of the loop exits again


def test_code_l1_writes_between_entries_exits(h: TdHarness, l2: L2Context) -> None:
    l2.load(CODE, assemble("nop\nnop\nhlt", CODE))
    assert l2.enter(rip=CODE, rsp=STACK_TOP).reason == ExitReason.HLT
    h.write(CODE, CPUID)
    ex = l2.enter(rip=CODE, rsp=STACK_TOP)
    assert ex.reason == ExitReason.CPUID
    assert ex.rip == CODE and ex.instr_len == len(CPUID)
    h.write(CODE, b"\x90\x90")  # and back: the NOPs run, HLT exits
    assert l2.enter(rip=CODE, rsp=STACK_TOP).reason == ExitReason.HLT


def test_exiting_instruction_across_a_page_boundary(l2: L2Context) -> None:
    start = CODE + PAGE_SIZE - 3
    l2.load(CODE, bytes(PAGE_SIZE * 2))
    l2.load(start, b"\x90\x66\x0f" + b"\x01\xcc" + b"\xf4")  # nop; tdcall (66 0F 01 CC); hlt
    ex = l2.enter(rip=start, rsp=STACK_TOP)
    assert ex.reason == ExitReason.TDCALL
    assert ex.rip == start + 1 and ex.instr_len == 4


def test_prefixed_exiting_instruction_after_a_long_straight_run(l2: L2Context) -> None:
    body = "nop\n" * 3000 + ".byte 0xf3, 0xf4\nud2"  # HLT with a redundant REP prefix
    l2.load(CODE, assemble(body, CODE))
    ex = l2.enter(rip=CODE, rsp=STACK_TOP)
    assert ex.reason == ExitReason.HLT
    assert ex.rip == CODE + 3000 and ex.instr_len == 2


def test_software_interrupt_is_delivered_not_run_by_unicorn(l2: L2Context) -> None:
    # INT3 with no IDT (limit 0): delivery fails, which the model reports as a triple fault
    l2.load(CODE, b"\xcc\xf4")
    ex = l2.enter(rip=CODE, rsp=STACK_TOP)
    assert ex.reason == ExitReason.TRIPLE_FAULT


def test_code_l1_writes_on_a_page_l2_read_before_running_it(h: TdHarness, l2: L2Context) -> None:
    # L2 runs code on CODE (so the next page is scanned ahead) and reads data from the next
    # page; L1 then puts CPUID there and L2 jumps to it: the new instruction must exit.
    following = CODE + PAGE_SIZE
    l2.load(following, b"\x90\x90\xf4")  # nop; nop; hlt
    src = f"mov rax, qword ptr [{following:#x}]\nhlt\nmov rax, {following:#x}\njmp rax"
    l2.load(CODE, assemble(src, CODE))
    ex = l2.enter(rip=CODE, rsp=STACK_TOP)
    assert ex.reason == ExitReason.HLT
    h.write(following, CPUID)
    l2.skip(ex)
    ex = l2.enter()
    assert ex.reason == ExitReason.CPUID
    assert ex.rip == following and ex.instr_len == len(CPUID)


@pytest.mark.parametrize("read_first", [True, False], ids=["read-then-run", "run"])
def test_page_before_an_exit_at_a_page_start_reads_and_runs(
    h: TdHarness, l2: L2Context, read_first: bool
) -> None:
    # Stopping at CPUID on the first byte of CODE makes unicorn look at the page before it,
    # from which nothing ran; L1 then writes CPUID there, and L2 (reads and) runs it.
    before = CODE - PAGE_SIZE
    l2.load(before + 0x800, (0x5EED).to_bytes(8, "little"))
    l2.load(before, b"\x90\x90\x90\xf4")  # nop; nop; nop; hlt
    read = f"mov rbx, qword ptr [{before + 0x800:#x}]\n" if read_first else ""
    tail = assemble(f"{read}mov rax, {before:#x}\njmp rax")
    l2.load(CODE, CPUID + b"\xeb\xfc" + tail)  # cpuid; jmp back to it; the tail
    for _ in range(2):
        ex = l2.enter(rip=CODE + 2, rsp=STACK_TOP)
        assert ex.reason == ExitReason.CPUID and ex.rip == CODE
    h.write(before + 1, CPUID)
    ex = l2.enter(rip=CODE + 4)
    assert ex.reason == ExitReason.CPUID
    assert ex.rip == before + 1
    assert ex.guest.rbx == (0x5EED if read_first else 0)


@pytest.fixture
def frequent_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop every translation before every other run of unicorn, so that each case below
    crosses many flushes (exits are checked when an instruction starts, not translated)."""
    run = engine.Runner.run
    runs = itertools.count()

    def flushing_run(
        self: engine.Runner, begin: int, count: int, pass_once: int = NO_ADDRESS
    ) -> int:
        if next(runs) % 2:
            self._uc.ctl_flush_tb()
        return run(self, begin, count, pass_once)

    monkeypatch.setattr(engine.Runner, "run", flushing_run)


@pytest.mark.usefixtures("frequent_flushes")
def test_exits_stop_every_time_across_translation_flushes(h: TdHarness, l2: L2Context) -> None:
    l2.load(CODE, assemble(SELF_PATCHING, CODE))
    ex = l2.enter(rip=CODE, rsp=STACK_TOP)
    for remaining in range(50, 40, -1):  # L2 wrote this code: decoded per instruction
        assert ex.reason == ExitReason.CPUID and ex.guest.rcx == remaining
        l2.skip(ex)
        ex = l2.enter()
    other = CODE + 2 * PAGE_SIZE
    l2.load(other, assemble("1: cpuid\njmp 1b", other))
    for _ in range(10):  # scanned code: unicorn stops at its exit after each flush
        ex = l2.enter(rip=other, rsp=STACK_TOP)
        assert ex.reason == ExitReason.CPUID and ex.rip == other
    h.write(other, b"\xf4\x90")  # and L1's write between entries is still found
    ex = l2.enter(rip=other, rsp=STACK_TOP)
    assert ex.reason == ExitReason.HLT and ex.rip == other


def test_code_on_a_page_scanned_before_l1_made_it_executable_exits(l2: L2Context) -> None:
    # Giving a page an alias makes unicorn look at the page before it, so the new page is
    # scanned ahead after L1 wrote its code but before its alias lets L2 run it (no exits
    # then): the first fetch must scan it again, or unicorn runs CPUID itself.
    l2.load(CODE, assemble("hlt", CODE))
    assert l2.enter(rip=CODE, rsp=STACK_TOP).reason == ExitReason.HLT
    other = CODE + 2 * PAGE_SIZE  # not scanned ahead by the run above
    l2.load(other, CPUID + b"\xeb\xfc")  # cpuid; jmp back to it
    ex = l2.enter(rip=other, rsp=STACK_TOP)
    assert ex.reason == ExitReason.CPUID
    assert ex.rip == other and ex.instr_len == len(CPUID)
