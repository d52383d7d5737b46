"""Round trips timed from inside L1: L2 exits (VP.ENTER -> CPUID exit) and TDVMCALLs to the host.

Sets up VM 1 the way a paravisor does with raw TDCALLs (vAPIC page, flat GDT, selectors, aliases,
guest-state block) and loops; returns JSON with the per-iteration times in nanoseconds.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

from .main import L1, LEAF_ACCEPT, LEVEL_2M

LEAF_VP_WR, LEAF_ATTR_WR, LEAF_VP_ENTER = 10, 24, 25
GHCI_HLT = 0x0C
VM = 1
BASE = 0x600000  # a 2M block: code, GDT, vAPIC, guest state
CODE, GDT, VAPIC, STATE = BASE, BASE + 0x1000, BASE + 0x2000, BASE + 0x3000
L2_CODE = bytes.fromhex("0fa2ebfc")  # cpuid; jmp back to the cpuid
GDT_ENTRIES = (0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF)
SEL_CODE, SEL_DATA = 0x08, 0x10
VIRTUAL_APIC_PAGE_ADDR, GUEST_GDTR_BASE, GUEST_GDTR_LIMIT = 0x2012, 0x6816, 0x4810
GUEST_CS_SELECTOR, GUEST_SS_SELECTOR = 0x0802, 0x0804
ELEM_16, ELEM_32, ELEM_64 = 1, 2, 3
VMCS_CLASS_BASE, CLASS_STRIDE, CONTEXT_VCPU = 36, 8, 2
ATTR_R, ATTR_W, ATTR_XS, ATTR_VALID = 1, 2, 4, 0x8000
EXIT_CPUID = 10
RFLAGS_FIXED = 2
GUEST_STATE = struct.Struct("<16QQQQH")
RIP_INDEX = 17
GUEST_STATE_SIZE = 256


def field_id(encoding: int, elem: int) -> int:
    """TDG.VP.WR field id of an L2 VMCS field of VM 1 (TD partitioning: L2 VMCS field IDs)."""
    vm_class = VMCS_CLASS_BASE + CLASS_STRIDE * (VM - 1)
    return (vm_class << 56) | (CONTEXT_VCPU << 52) | (elem << 32) | encoding


def setup(l1: L1) -> None:
    l1.tdcall(LEAF_ACCEPT, rcx=BASE | LEVEL_2M)
    writes = (
        (VIRTUAL_APIC_PAGE_ADDR, ELEM_64, VAPIC),
        (GUEST_GDTR_BASE, ELEM_64, GDT),
        (GUEST_GDTR_LIMIT, ELEM_32, 8 * len(GDT_ENTRIES) - 1),
        (GUEST_CS_SELECTOR, ELEM_16, SEL_CODE),
        (GUEST_SS_SELECTOR, ELEM_16, SEL_DATA),
    )
    for encoding, elem, value in writes:
        l1.tdcall(LEAF_VP_WR, rcx=0, rdx=field_id(encoding, elem), r8=value, r9=(1 << 64) - 1)
    l1.write(GDT, b"".join(v.to_bytes(8, "little") for v in GDT_ENTRIES))
    l1.write(CODE, L2_CODE)
    for page, attrs in ((GDT, ATTR_R), (CODE, ATTR_R | ATTR_W | ATTR_XS)):
        l1.tdcall(
            LEAF_ATTR_WR,
            rcx=page,
            rdx=(attrs | ATTR_VALID) << (16 * VM),
            r8=(ATTR_R | ATTR_W | ATTR_XS) << (16 * VM),
        )
    block = GUEST_STATE.pack(*([0] * 16), RFLAGS_FIXED, CODE, 0, 0)
    l1.write(STATE, block.ljust(GUEST_STATE_SIZE, b"\0"))


def bench(platform: Any, iterations: int = 2000) -> str:
    """Time L2 exit round trips and host TDVMCALL round trips; JSON of the samples (ns)."""
    l1 = L1(platform)
    setup(l1)
    l2_ns = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        out = l1.tdcall(LEAF_VP_ENTER, rcx=VM << 52, rdx=STATE)
        l2_ns.append(time.perf_counter_ns() - t0)
        if out[0] & 0xFFFFFFFF != EXIT_CPUID:
            raise RuntimeError(f"L2 exit {out[0]:#x}, expected CPUID")
        values = list(GUEST_STATE.unpack(l1.read(STATE, GUEST_STATE.size)))
        values[RIP_INDEX] += out[11] >> 32  # past the CPUID, by the exit's instruction length
        l1.write(STATE, GUEST_STATE.pack(*values))
    vmcall_ns = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        l1.vmcall(GHCI_HLT, r12=0)
        vmcall_ns.append(time.perf_counter_ns() - t0)
    return json.dumps({"l2_exit_ns": l2_ns, "tdvmcall_ns": vmcall_ns})


def quick(platform: Any) -> str:
    """A short run for the tests."""
    return bench(platform, iterations=20)


def host_routed(platform: Any) -> str:
    """L2 reads a shared GPA the host never mapped: a host-routed exit, then L1 is resumed."""
    l1 = L1(platform)
    setup(l1)
    gpa = platform.shared_bit | 0x700000
    l1.write(CODE, bytes.fromhex("48a1") + gpa.to_bytes(8, "little"))  # mov rax, [gpa]
    out = l1.tdcall(LEAF_VP_ENTER, rcx=VM << 52, rdx=STATE)
    return json.dumps({"rax": out[0], "gpa": out[8]})


def bench_quick(platform: Any) -> str:
    """The benchmark's --quick size."""
    return bench(platform, iterations=300)
