"""The L2 exiting-instruction decoder on raw bytes: which instructions the model acts on, the
exit reason, and the instruction length reported in the exit (Intel SDM Vol. 2 instruction
format; exit reasons per Intel SDM Vol. 3). Reference numbers are spelled out here."""

from __future__ import annotations

import pytest

from tdxsim.l2.decode import Action, decode, exit_candidates, operand_address

CPUID, HLT, IO, INVLPG, MSR_READ, MSR_WRITE, RDTSC = 10, 12, 30, 14, 31, 32, 16
VMCALL, VMCLEAR, VMPTRLD, VMPTRST, VMREAD, VMXON = 18, 19, 21, 22, 23, 27
GETSEC, INVD, WBINVD, XSETBV, VMFUNC, INVEPT, INVVPID, PAUSE, TDCALL = (
    11, 13, 54, 55, 59, 50, 53, 40, 77,
)  # fmt: skip
RDTSC_EXITING, PAUSE_EXITING, INVLPG_EXITING = 1 << 12, 1 << 30, 1 << 9


@pytest.mark.parametrize(
    ("code", "reason", "length"),
    [
        ("0fa2", CPUID, 2),
        ("480fa2", CPUID, 3),  # REX.W
        ("660fa2", CPUID, 3),
        ("f4", HLT, 1),
        ("f3f4", HLT, 2),
        ("0f01c1", VMCALL, 3),
        ("0f37", GETSEC, 2),
        ("0f08", INVD, 2),
        ("0f09", WBINVD, 2),
        ("0f01d1", XSETBV, 3),
        ("0f01d4", VMFUNC, 3),
        ("0f78c1", VMREAD, 3),  # register form
        ("0f7804 25 00100000".replace(" ", ""), VMREAD, 8),  # SIB, disp32, no base
        ("0fc730", VMPTRLD, 3),  # [rax]
        ("660fc730", VMCLEAR, 4),
        ("f30fc730", VMXON, 4),
        ("0fc738", VMPTRST, 3),
        ("0fc77008", VMPTRLD, 4),  # [rax+8]: disp8
        ("0fc7b000100000", VMPTRLD, 7),  # [rax+0x1000]: disp32
        ("0fc73500000000", VMPTRLD, 7),  # RIP-relative
        ("660f388008", INVEPT, 5),
        ("660f388108", INVVPID, 5),
    ],
)
def test_instructions_that_always_exit(code: str, reason: int, length: int) -> None:
    insn = decode(bytes.fromhex(code) + b"\x90" * 8)
    assert insn is not None
    assert (insn.action, insn.reason, insn.length) == (Action.EXIT, reason, length)


@pytest.mark.parametrize(
    ("code", "action", "length"),
    [
        ("0f32", Action.MSR, 2),
        ("0f30", Action.MSR, 2),
        ("660f01cc", Action.TDCALL, 4),
        ("fb", Action.SHADOW, 1),
        ("8ed0", Action.SHADOW, 2),  # mov ss, ax
        ("0f22d8", Action.MOV_TO_CR, 2),  # mov cr3, rax: only the opcode matters here
    ],
)
def test_instructions_the_model_decides_at_run_time(code: str, action: Action, length: int) -> None:
    insn = decode(bytes.fromhex(code) + b"\x90" * 8)
    assert insn is not None and (insn.action, insn.length) == (action, length)


def test_msr_access_direction() -> None:
    rdmsr, wrmsr = decode(bytes.fromhex("0f32")), decode(bytes.fromhex("0f30"))
    assert rdmsr is not None and not rdmsr.write and rdmsr.reason == MSR_READ
    assert wrmsr is not None and wrmsr.write and wrmsr.reason == MSR_WRITE


@pytest.mark.parametrize(
    ("code", "reason", "control", "length"),
    [
        ("0f31", RDTSC, RDTSC_EXITING, 2),
        ("f390", PAUSE, PAUSE_EXITING, 2),
        ("0f0138", INVLPG, INVLPG_EXITING, 3),  # [rax]
        ("0f017c2408", INVLPG, INVLPG_EXITING, 5),  # [rsp+8]: SIB + disp8
        ("0f01bc8810000000", INVLPG, INVLPG_EXITING, 8),  # [rax+rcx*4+0x10]
        ("0f013d00100000", INVLPG, INVLPG_EXITING, 7),  # RIP-relative
    ],
)
def test_instructions_that_exit_under_a_control(
    code: str, reason: int, control: int, length: int
) -> None:
    insn = decode(bytes.fromhex(code) + b"\x90" * 8)
    assert insn is not None and insn.action is Action.EXIT_IF_CONTROL
    assert (insn.reason, insn.control, insn.length) == (reason, control, length)


@pytest.mark.parametrize(
    ("code", "qualification", "port", "length"),
    [
        ("e460", 0x40 | 0x8, 0x60, 2),  # in al, 0x60: immediate, in, byte
        ("e780", 0x40 | 3, 0x80, 2),  # out 0x80, eax
        ("66ed", 0x8 | 1, None, 2),  # in ax, dx
        ("ee", 0, None, 1),  # out dx, al
        ("f36c", 0x20 | 0x10 | 0x8, None, 2),  # rep insb
        ("6f", 0x10 | 3, None, 1),  # outsd
    ],
)
def test_io_qualification_from_the_bytes(
    code: str, qualification: int, port: int | None, length: int
) -> None:
    insn = decode(bytes.fromhex(code))
    assert insn is not None and (insn.action, insn.reason) == (Action.IO, IO)
    assert (insn.io_qualification, insn.port, insn.length) == (qualification, port, length)


@pytest.mark.parametrize(
    ("code", "vector", "length"), [("cc", 3, 1), ("cd80", 0x80, 2), ("f1", 1, 1)]
)
def test_software_interrupts(code: str, vector: int, length: int) -> None:
    insn = decode(bytes.fromhex(code))
    assert insn is not None and insn.action is Action.SOFTWARE_INTERRUPT
    assert (insn.vector, insn.length) == (vector, length)


@pytest.mark.parametrize(
    "code",
    [
        "90",  # nop
        "4889c8",  # mov rax, rcx
        "0fb6c0",  # movzx eax, al
        "660f01c1",  # VMCALL bytes with a prefix: not VMCALL
        "0f01cc",  # TDCALL bytes without 66
        "660f78c1",  # EXTRQ, not VMREAD
        "0fc7f0",  # RDRAND
        "f20fc730",  # no VMX instruction with F2
        "0f388008",  # INVEPT bytes without 66
        "660f3880c8",  # INVEPT register form: #UD, unicorn's to raise
        "ce",  # INTO: #UD in 64-bit mode
        "8ed8",  # mov ds, ax: no interrupt shadow
        "0f",  # cut off
        "0f01",
        "cd",
        "",
    ],
)
def test_instructions_left_to_unicorn(code: str) -> None:
    assert decode(bytes.fromhex(code)) is None


def test_operand_address_of_invlpg() -> None:
    regs = {0: 0x1000, 1: 0x20}  # RAX, RCX
    sib = bytes.fromhex("0f01bc8810000000")  # invlpg [rax+rcx*4+0x10]
    gpr, no_segment = regs.__getitem__, lambda _prefix: 0
    assert operand_address(sib, 0, frozenset(), 0, gpr, no_segment) == 0x1000 + 0x80 + 0x10
    rip_relative = bytes.fromhex("0f013d00100000")  # invlpg [rip+0x1000]
    assert operand_address(rip_relative, 0, frozenset(), 0x5007, gpr, no_segment) == 0x6007
    with_fs = bytes.fromhex("640f0138")  # invlpg fs:[rax]
    fs_base = {0x64: 0x7000_0000}.__getitem__
    assert operand_address(with_fs, 1, frozenset({0x64}), 0, gpr, fs_base) == 0x7000_1000
    regs[0] = 0x1_0000_1000
    addr32 = bytes.fromhex("670f0138")  # invlpg [eax]
    assert operand_address(addr32, 1, frozenset({0x67}), 0, gpr, no_segment) == 0x1000


def page_with(at: int, code: str) -> bytes:
    page = bytearray(b"\x90" * 4096)
    raw = bytes.fromhex(code)
    page[at : at + len(raw)] = raw
    return bytes(page)


def test_scan_finds_the_start_of_each_exiting_instruction() -> None:
    assert exit_candidates(page_with(100, "0fa2"), 0) == {100}
    assert exit_candidates(page_with(100, "480fa2"), 0) == {100, 101}  # REX may start it
    assert exit_candidates(page_with(100, "66f3f4"), 0) == {100, 101, 102}
    assert exit_candidates(b"\x90" * 4096, 0) == set()


def test_scan_follows_the_controls() -> None:
    page = page_with(200, "0f31")  # RDTSC
    assert exit_candidates(page, 0) == set()
    assert exit_candidates(page, RDTSC_EXITING) == {200}


def test_scan_covers_instructions_crossing_a_page_boundary() -> None:
    assert 4095 in exit_candidates(page_with(4095, "0f"), 0)  # 0F A2 split over two pages
    starts = exit_candidates(page_with(0, "66f4"), 0)  # prefixes may begin on the page before
    assert min(starts) < 0 and {0, 1} <= starts
