"""x86 architectural numbers the L2 vCPU model and L1 share: RFLAGS bits, exception vectors,
x2APIC MSRs and the virtual-APIC page register offsets.

Intel 64 and IA-32 Architectures Software Developer's Manual, Volume 3: "EFLAGS register",
"Exception and interrupt vectors" (and which exceptions push an error code), "x2APIC register
address space", "Local APIC register address map"; the virtual-APIC page follows the xAPIC layout
("Virtual-APIC page", chapter on APIC virtualization).
"""

from __future__ import annotations

RFLAGS_FIXED = 1 << 1
RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16

VECTOR_DE = 0
VECTOR_UD = 6
VECTOR_DF = 8
VECTOR_GP = 13
VECTOR_PF = 14
EXCEPTIONS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
FIRST_EXTERNAL_VECTOR = 32  # vectors 0..31 are exceptions
LAST_VECTOR = 255

X2APIC_MSR_TPR = 0x808
X2APIC_MSR_EOI = 0x80B

VAPIC_TPR = 0x80
VAPIC_PPR = 0xA0
VAPIC_EOI = 0xB0
VAPIC_ISR = 0x100
VAPIC_IRR = 0x200
VAPIC_REG_STRIDE = 0x10

# Flat 64-bit segment descriptors (Intel SDM Vol. 3, 3.4.5): a long-mode code segment (L=1,
# DPL 0, present, execute/read) and a 4 GiB read/write data segment, and their selectors in a
# GDT of [null, code, data].
GDT_CODE64 = 0x00AF9B000000FFFF
GDT_DATA = 0x00CF93000000FFFF
SELECTOR_CODE = 0x08
SELECTOR_DATA = 0x10
GDT_FLAT_LIMIT = 3 * 8 - 1

CR0_PE = 1 << 0
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
