"""MMIO instruction decoding: what L1 emulates, with the SDM register rules, and what it refuses."""

from __future__ import annotations

import random

import pytest

from svsm.decode import Direction, Extension, MmioInstruction, NotEmulatable, decode_mmio
from tdxsim.testing import assemble

RIP = 0x401000
BASE = 0xFED40000
RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI = range(8)
R9, R10, R11, R15 = 9, 10, 11, 15


def decode(source: str) -> MmioInstruction:
    return decode_mmio(assemble(source, RIP), RIP)


def gprs(**values: int) -> list[int]:
    names = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"]
    names += [f"r{i}" for i in range(8, 16)]
    regs = [0x1111_2222_3333_4444] * 16
    for name, value in values.items():
        regs[names.index(name)] = value
    return regs


@pytest.mark.parametrize(
    ("source", "size", "register", "extension"),
    [
        ("mov eax, dword ptr [rdi + 0x30]", 4, (RAX, 4), Extension.NONE),
        ("mov al, byte ptr [rdi + 0x30]", 1, (RAX, 1), Extension.NONE),
        ("mov ax, word ptr [rdi + 0x30]", 2, (RAX, 2), Extension.NONE),
        ("mov rbx, qword ptr [rdi + 0x30]", 8, (RBX, 8), Extension.NONE),
        ("mov r9d, dword ptr [r10 + r11 * 4 + 0x10]", 4, (R9, 4), Extension.NONE),
        ("movzx ecx, byte ptr [rdi]", 1, (RCX, 4), Extension.ZERO),
        ("movzx rdx, word ptr [rdi]", 2, (RDX, 8), Extension.ZERO),
        ("movsx rax, byte ptr [rdi]", 1, (RAX, 8), Extension.SIGN),
        ("movsxd rsi, dword ptr [rdi]", 4, (RSI, 8), Extension.SIGN),
        ("movabs eax, dword ptr [0xfed40030]", 4, (RAX, 4), Extension.NONE),
    ],
)
def test_loads(source: str, size: int, register: tuple[int, int], extension: Extension) -> None:
    insn = decode(source)
    assert insn.direction is Direction.READ and insn.size == size
    assert insn.register is not None
    assert (insn.register.index, insn.register.size) == register
    assert insn.extension is extension
    assert insn.length == len(assemble(source, RIP))


@pytest.mark.parametrize(
    ("source", "regs", "value"),
    [
        ("mov dword ptr [rdi + 0x40], eax", {"rax": 0xAABBCCDD_01020304}, b"\x04\x03\x02\x01"),
        ("mov byte ptr [rdi], 0x5", {}, b"\x05"),
        ("mov word ptr [rdi], r15w", {"r15": 0xBEEF}, b"\xef\xbe"),
        ("mov qword ptr [rdi], -1", {}, b"\xff" * 8),
        ("mov byte ptr [rdi], ah", {"rax": 0x1234}, b"\x12"),
        ("movabs qword ptr [0xfed40080], rax", {"rax": 7}, (7).to_bytes(8, "little")),
    ],
)
def test_stores_give_the_bytes_to_write(source: str, regs: dict[str, int], value: bytes) -> None:
    insn = decode(source)
    assert insn.direction is Direction.WRITE
    assert insn.store_value(gprs(**regs)) == value
    assert insn.stored(gprs(**regs)) == int.from_bytes(value, "little")  # as a register takes it


@pytest.mark.parametrize(
    ("source", "answer", "before", "after"),
    [
        ("mov eax, dword ptr [rdi]", 0x1_0000_0001, 0xFFFF_FFFF_FFFF_FFFF, 1),  # 4 bytes taken
        ("mov ax, word ptr [rdi]", 0x1234, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_1234),
        ("mov ah, byte ptr [rdi]", 0x100, 0xFFFF, 0x00FF),  # the byte is 0: bits 15:8 cleared
        ("movsx rax, byte ptr [rdi]", 0x80, 0, 0xFFFF_FFFF_FFFF_FF80),
        ("movsxd rax, dword ptr [rdi]", 0x7FFF_FFFF, 0, 0x7FFF_FFFF),
        ("movzx eax, word ptr [rdi]", 0xFFFF_8001, 0xFFFF_FFFF_FFFF_FFFF, 0x8001),
    ],
)
def test_a_device_answer_as_a_number_loads_like_its_bytes(
    source: str, answer: int, before: int, after: int
) -> None:
    insn = decode(source)
    by_number, by_bytes = gprs(rax=before), gprs(rax=before)
    insn.load(by_number, answer)
    mask = (1 << 8 * insn.size) - 1
    insn.complete_load(by_bytes, (answer & mask).to_bytes(insn.size, "little"))
    assert by_number[RAX] == by_bytes[RAX] == after


def test_effective_address_matches_what_the_cpu_computes() -> None:
    regs = gprs(rdi=BASE, r10=BASE, r11=3)
    assert decode("mov eax, dword ptr [rdi + 0x30]").memory.linear_address(regs, 0) == BASE + 0x30
    scaled = decode("mov r9d, dword ptr [r10 + r11 * 4 + 0x10]")
    assert scaled.memory.linear_address(regs, 0) == BASE + 12 + 0x10
    negative = decode("mov eax, dword ptr [rdi - 8]")
    assert negative.memory.linear_address(regs, 0) == BASE - 8
    moffs = decode("movabs eax, dword ptr [0xfed40030]")
    assert moffs.memory.linear_address(regs, 0) == BASE + 0x30
    rel = decode("mov eax, dword ptr [rip + 0x100]")
    assert rel.memory.rip_relative
    assert rel.memory.linear_address(regs, 0) == RIP + rel.length + 0x100
    short = decode("mov eax, dword ptr [edi + 0x30]")
    assert short.memory.linear_address(gprs(rdi=0x1_FED4_0000), 0) == BASE + 0x30  # 0x67: 32-bit


def test_register_write_semantics_follow_the_sdm() -> None:
    regs = gprs(rax=0xFFFF_FFFF_FFFF_FFFF)
    decode("mov eax, dword ptr [rdi]").complete_load(regs, b"\x01\x00\x00\x00")
    assert regs[RAX] == 1  # a 32-bit destination zero-extends
    regs = gprs(rax=0xFFFF_FFFF_FFFF_FFFF)
    decode("mov ax, word ptr [rdi]").complete_load(regs, b"\x34\x12")
    assert regs[RAX] == 0xFFFF_FFFF_FFFF_1234  # 16 bits merge
    regs = gprs(rax=0xFFFF_FFFF_FFFF_FFFF)
    decode("mov ah, byte ptr [rdi]").complete_load(regs, b"\x00")
    assert regs[RAX] == 0xFFFF_FFFF_FFFF_00FF  # AH is bits 15:8
    regs = gprs()
    decode("movsx rax, byte ptr [rdi]").complete_load(regs, b"\x80")
    assert regs[RAX] == 0xFFFF_FFFF_FFFF_FF80
    regs = gprs()
    decode("movsx ecx, word ptr [rdi]").complete_load(regs, b"\x00\x80")
    assert regs[RCX] == 0xFFFF_8000  # sign-extended to 32, then zero-extended to 64
    regs = gprs()
    decode("movzx rdx, byte ptr [rdi]").complete_load(regs, b"\x80")
    assert regs[RDX] == 0x80


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("lock inc dword ptr [rdi]", "LOCK/REP"),
        ("rep movsb", "LOCK/REP"),
        ("mov eax, dword ptr fs:[0x30]", "FS/GS"),
        ("movaps xmm0, xmmword ptr [rdi]", "single memory operand|16-byte"),
        ("add dword ptr [rdi], eax", "only MOV"),
        ("or dword ptr [rdi], 1", "only MOV"),
        ("cmp dword ptr [rdi], 0", "only MOV"),
        ("mov eax, ebx", "single memory operand"),
        ("ud2", "single memory operand"),
    ],
)
def test_everything_else_is_refused_by_name(source: str, why: str) -> None:
    with pytest.raises(NotEmulatable, match=why):
        decode(source)


def test_truncated_empty_and_prefix_flooded_bytes_are_refused() -> None:
    full = assemble("mov eax, dword ptr [rdi + 0x30]", RIP)
    with pytest.raises(NotEmulatable, match="do not decode"):
        decode_mmio(full[:2], RIP)
    with pytest.raises(NotEmulatable, match="no bytes"):
        decode_mmio(b"", RIP)
    with pytest.raises(NotEmulatable, match="do not decode"):
        decode_mmio(b"\x66" * 15 + full, RIP)  # past the 15-byte architectural limit


def test_loads_and_stores_cannot_be_confused() -> None:
    load, store = decode("mov eax, dword ptr [rdi]"), decode("mov dword ptr [rdi], eax")
    with pytest.raises(NotEmulatable, match="no value to store"):
        load.store_value(gprs())
    with pytest.raises(NotEmulatable, match="not a load"):
        store.complete_load(gprs(), b"\0" * 4)
    with pytest.raises(NotEmulatable, match="3 bytes for a 4-byte load"):
        load.complete_load(gprs(), b"\0" * 3)
    with pytest.raises(NotEmulatable, match="no value to store"):
        load.stored(gprs())
    regs = gprs()
    with pytest.raises(NotEmulatable, match="not a load"):
        store.load(regs, 1)
    assert regs == gprs()  # nothing written


def test_random_bytes_never_escape_as_anything_but_not_emulatable() -> None:
    rng = random.Random(20261206)
    decoded = 0
    for _ in range(20_000):
        code = rng.randbytes(rng.randrange(0, 17))
        try:
            insn = decode_mmio(code, RIP)
        except NotEmulatable:
            continue
        decoded += 1
        assert 1 <= insn.length <= 15 and insn.size in (1, 2, 4, 8)
    assert decoded > 0  # some random bytes are MOVs; the accepted ones are well formed
