"""Hostile L2 guests against the paravisor: each attempt fails in the documented way (refused and
logged, #GP(0) or #UD into the L2, an error status for a call L1 does not serve, or the L2
stopped with a report), and the firmware in the other L2 still passes its self-test."""

from __future__ import annotations

import pytest

from orchestrator.firmware import Firmware
from svsm.l1vtpm import L1VtpmService
from svsm.l2guest import L2Guest, L2State
from svsm.scheduler import run_guests
from tdxdefs.attributes import GpaAttr
from tdxsim.testing import assemble
from tests.support.svsm_td import Paravisor

TDCALL = ".byte 0x66, 0x0f, 0x01, 0xcc"
EXIT_WITH_AL = "out 0xf4, al"


def run_beside_firmware(source: str, firmware: Firmware) -> tuple[Paravisor, L2Guest, L2Guest]:
    pv = Paravisor(2)
    hostile, honest = pv.guests({1: assemble(source, pv.layout(1).ram_gpa), 2: firmware.image})
    run_guests([hostile, honest])
    assert honest.outcome.exit_code == 0, (honest.console.lines, pv.log)
    assert "selftest: pass" in honest.console.lines
    return pv, hostile, honest


@pytest.mark.parametrize(
    ("source", "report"),
    [
        ("mov rax, qword ptr [0x207000]", "read at GPA 0x207000 (L1's L2 VM 1 VAPIC)"),
        ("mov rax, qword ptr [0x208010]", "read at GPA 0x208010 (L1's L2 VM 1 GUEST_STATE)"),
        ("mov qword ptr [0x200000], rax", "write at GPA 0x200000"),
        ("mov qword ptr [0x400000], rax", "write at GPA 0x400000 (its own RAM, alias R|XS)"),
        ("mov rax, qword ptr [0x600000]", "read at GPA 0x600000 (memory that is not this L2's)"),
        ("mov rax, qword ptr [0x100000]", "read at GPA 0x100000 (memory that is not this L2's)"),
        ("vmcall", "VMCALL is not a paravisor call"),
        ("mov ecx, 0x1b\nrdmsr", "RDMSR 0x1b"),
        ("mov ecx, 0x80b\nmov eax, 1\nxor edx, edx\nwrmsr\nmov ecx, 0x10\nwrmsr", "WRMSR 0x10"),
        ("mov dx, 0x60\nin al, dx", "IN from port 0x60"),
        ("mov dx, 0x3f8\nmov rsi, 0x401000\nrep outsb", "string IO on port 0x3f8"),
        ("mov rdi, 0xfed40030\nmov eax, dword ptr fs:[rdi]", "FS/GS-relative MMIO"),
        ("mov rdi, 0xfed40040\nlock inc dword ptr [rdi]", "LOCK/REP"),
        ("mov rdi, 0xfed40030\nxchg dword ptr [rdi], eax", "only MOV"),
        ("mov rdi, 0xfed40030\nmovnti dword ptr [rdi], eax", "only MOV"),
        ("mov rdi, 0xfed40030\nadd dword ptr [rdi], eax", "only MOV"),
        ("mov ecx, 0x83f\nmov eax, 3\nxor edx, edx\nwrmsr", "vector 0x3 is not an external"),
    ],
)
def test_attempt_is_refused_and_reported(firmware: Firmware, source: str, report: str) -> None:
    pv, hostile, _ = run_beside_firmware(source + "\nmov al, 7\n" + EXIT_WITH_AL, firmware)
    assert any(report in line for line in pv.log), pv.log
    # refused with #GP/#UD into a guest without an IDT: it triple-faults and is stopped
    assert hostile.outcome.state is L2State.STOPPED, pv.log
    assert "TRIPLE_FAULT" in hostile.outcome.fatal


def test_alias_change_through_tdcall_is_an_error_status(firmware: Firmware) -> None:
    source = (
        f"mov eax, 24\nmov rcx, 0x400000\nmov rdx, 0x80070000\nmov r8, 0x70000\n{TDCALL}\n"
        f"shr rax, 56\n{EXIT_WITH_AL}"
    )
    pv, hostile, _ = run_beside_firmware(source, firmware)
    assert hostile.outcome.exit_code == 0xC0  # TDX_OPERAND_INVALID's class byte
    assert pv.aliases.attrs(1, 0x400000) == GpaAttr.R | GpaAttr.XS  # unchanged


@pytest.mark.parametrize(
    ("registers", "code"),
    [
        ("mov r10, 1\nmov r11, 0x10005", 0x80),  # R10 not GHCI-standard
        ("xor r10, r10\nmov r11, 0x10005\nmov r12, 0xfffffffffffff000\nmov r13, 0", 0x80),
        ("xor r10, r10\nmov r11, 0x10001\nmov r12, 0x400000\nmov r13, 0x100000000", 0x80),
        ("xor r10, r10\nmov r11, 0x10002", 0x80),  # GetQuote is L1's, not an L2's
    ],
)
def test_malformed_or_unserved_tdvmcall_gets_operand_invalid(
    firmware: Firmware, registers: str, code: int
) -> None:
    source = f"xor eax, eax\n{registers}\n{TDCALL}\nmov rax, r10\nshr rax, 56\n{EXIT_WITH_AL}"
    _pv, hostile, _ = run_beside_firmware(source, firmware)
    assert hostile.outcome.exit_code == code


def test_interrupt_flood_is_coalesced_and_bounded(firmware: Firmware) -> None:
    source = (
        "mov ecx, 0x83f\nmov eax, 0x41\nxor edx, edx\nmov ebx, 2000\n"
        f"1: wrmsr\ndec ebx\njnz 1b\nmov al, 5\n{EXIT_WITH_AL}"
    )
    _pv, hostile, _ = run_beside_firmware(source, firmware)
    assert hostile.outcome.exit_code == 5
    assert hostile.apic.posted == 1 and hostile.apic.coalesced == 1999
    assert hostile.apic.pending(0x41)  # IF stayed clear: pending, never delivered


def test_halt_with_interrupts_disabled_stops_only_that_l2(firmware: Firmware) -> None:
    _pv, hostile, _ = run_beside_firmware("cli\nhlt", firmware)
    assert hostile.outcome.state is L2State.STOPPED
    assert "HLT with interrupts disabled" in hostile.outcome.fatal


def test_halt_with_nothing_to_wake_is_parked_not_spun(firmware: Firmware) -> None:
    _pv, hostile, _ = run_beside_firmware("sti\n1: hlt\njmp 1b", firmware)
    assert hostile.outcome.state is L2State.STOPPED
    assert "nothing to wake it" in hostile.outcome.fatal
    assert hostile.outcome.exits["HLT"] == 1  # parked after its one HLT, never entered again


@pytest.mark.parametrize(
    ("command", "response"),
    [("0x401000", "0x207000"), ("0x208000", "0x402000"), ("0x401000", "0x700000")],
    ids=["response-into-l1", "command-from-l1", "response-into-other-l2"],
)
def test_service_pages_must_be_the_l2s_own(firmware: Firmware, command: str, response: str) -> None:
    pv = Paravisor(2)
    source = (
        f"xor eax, eax\nxor r10, r10\nmov r11, 0x10005\nmov r12, {command}\nmov r13, {response}\n"
        f"{TDCALL}\nmov rax, r10\nshr rax, 56\n{EXIT_WITH_AL}"
    )
    hostile, _honest = pv.guests(
        {1: assemble(source, pv.layout(1).ram_gpa), 2: firmware.image},
        service=L1VtpmService([]),
    )
    before = pv.memory.read(int(response, 16), 64)
    run_guests([hostile, _honest])
    assert hostile.outcome.exit_code == 0x80  # TDVMCALL_OPERAND_INVALID
    assert pv.memory.read(int(response, 16), 64) == before  # nothing written
    assert any("Service refused" in line for line in pv.log)
