"""l2-firmware: a reproducible gcc build, and the firmware's own behaviour on the simulated module.

The test acts as a minimal L1 (tdxsim.testing): it builds the L2 contract's identity paging,
aliases code R+X and data R+W from the image header, forwards COM1 to a console string and
ends the run on the isa-debug-exit port. Everything else the firmware asks for is answered (or
deliberately not) by each test, so the firmware's own reactions are what is checked.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.firmware import SOURCE_DIR, Firmware, FirmwareBuildError, build_firmware
from svsm.l2image import L2ImageLayout
from tdxdefs.attributes import ATTR_R, ATTR_VALID, ATTR_W, ATTR_XS
from tdxdefs.vmcs import (
    EPTV_WRITE,
    INTR_INFO_DELIVER_ERROR,
    INTR_INFO_TYPE_SHIFT,
    INTR_INFO_VALID,
    INTR_TYPE_HW_EXCEPTION,
    SEC_VIRTUAL_INTR_DELIVERY,
    ExitReason,
    Vmcs,
)
from tdxsim.testing import L2Context, L2Exit, TdHarness

L2_RAM = 0x400000
L2_RAM_END = 0x600000
PML4 = 0x100000
PDPT = PML4 + 0x1000
PDS = PML4 + 0x2000  # four page directories: 0..4 GiB in 2 MiB pages
PTE_PRESENT_WRITABLE = 0x3
PDE_LARGE = 0x80
CR0_PE_PG = 0x80000001
CR4_PAE = 0x20
COM1, DEBUG_EXIT = 0x3F8, 0xF4
X2APIC_SELF_IPI = 0x83F
VAPIC_IRR = 0x200
GP_VECTOR = 13
CRB_INTF_ID_GPA = 0xFED40030
RO_X = ATTR_R | ATTR_XS | ATTR_VALID
RW = ATTR_R | ATTR_W | ATTR_VALID
TDX_CPUID_21 = {0: (0, 0x65746E49, 0x20202020, 0x5844546C), 1: (0, 1, 0, 0)}
MAX_EXITS = 20_000


@dataclass
class Run:
    """What a run of the firmware showed: its console, its exit code, and the exit it stopped at."""

    console: str = ""
    exit_code: int | None = None
    stopped_at: L2Exit | None = None
    exits: list[int] = field(default_factory=list)


def inject_gp(l2: L2Context) -> None:
    """L1's answer to an access the L2 may not make: #GP(0) through the VM-entry interruption."""
    info = INTR_INFO_VALID | INTR_INFO_DELIVER_ERROR | GP_VECTOR
    l2.vmcs_write(Vmcs.ENTRY_INTR_INFO, info | (INTR_TYPE_HW_EXCEPTION << INTR_INFO_TYPE_SHIFT))
    l2.vmcs_write(Vmcs.ENTRY_EXCEPTION_ERROR_CODE, 0)


def boot(firmware: Firmware) -> tuple[TdHarness, L2Context]:
    h = TdHarness.default(ram_mib=8, num_l2_vms=1)
    h.accept(0, 8 << 20)
    l2 = h.l2(vm=1)
    h.write(PML4, (PDPT | PTE_PRESENT_WRITABLE).to_bytes(8, "little"))
    for gib in range(4):
        pd = PDS + gib * 0x1000
        h.write(PDPT + gib * 8, (pd | PTE_PRESENT_WRITABLE).to_bytes(8, "little"))
        entries = b"".join(
            (((gib << 30) + (i << 21)) | PTE_PRESENT_WRITABLE | PDE_LARGE).to_bytes(8, "little")
            for i in range(512)
        )
        h.write(pd, entries)
    for page in range(PML4, PDS + 4 * 0x1000, 0x1000):
        h.set_alias(1, page, ATTR_R | ATTR_VALID)  # L1 builds the tables; L2 may only read them
    layout = firmware.layout
    h.write(L2_RAM, firmware.image)
    for page in range(L2_RAM, L2_RAM_END, 0x1000):
        h.set_alias(1, page, RO_X if page - L2_RAM < layout.text_end else RW)
    l2.vmcs_write(Vmcs.GUEST_CR3, PML4)
    l2.vmcs_write(Vmcs.GUEST_CR4, CR4_PAE)
    l2.vmcs_write(Vmcs.GUEST_CR0, CR0_PE_PG)
    l2.vmcs_write(Vmcs.SECONDARY_CONTROLS, SEC_VIRTUAL_INTR_DELIVERY)
    l2.allow_msr(0x80B, read=False, write=True)  # x2APIC EOI: virtualized
    l2.rip, l2.regs.rsp, l2.rflags = L2_RAM, L2_RAM_END, 0x2
    return h, l2


def run(
    firmware: Firmware,
    cpuid: dict[int, tuple[int, int, int, int]] | None = None,
    on_ept: Callable[[L2Context, L2Exit], bool] | None = None,
    deliver_self_ipi: bool = True,
) -> Run:
    """Run until the firmware writes the exit port, or stops at an exit this L1 does not handle."""
    h, l2 = boot(firmware)
    answers = TDX_CPUID_21 if cpuid is None else cpuid
    out = Run()
    for _ in range(MAX_EXITS):
        ex = l2.enter()
        out.exits.append(ex.reason)
        if ex.reason == ExitReason.IO:
            port, is_in = ex.qualification >> 16, (ex.qualification >> 3) & 1
            if is_in:
                out.stopped_at = ex
                return out
            if port == DEBUG_EXIT:
                out.exit_code = ex.guest.rax & 0xFF
                return out
            if port == COM1:
                out.console += chr(ex.guest.rax & 0xFF)
        elif ex.reason == ExitReason.CPUID and ex.guest.rax == 0x21:
            a, b, c, d = answers.get(ex.guest.rcx, (0, 0, 0, 0))
            l2.regs.rax, l2.regs.rbx, l2.regs.rcx, l2.regs.rdx = a, b, c, d
        elif ex.reason == ExitReason.MSR_WRITE and ex.guest.rcx == X2APIC_SELF_IPI:
            vector = ex.guest.rax & 0xFF
            if deliver_self_ipi:
                irr = l2.vapic_gpa + VAPIC_IRR + (vector // 32) * 16
                h.write(irr, (1 << (vector % 32)).to_bytes(4, "little"))
                l2.rvi = vector
        elif ex.reason == ExitReason.HLT:
            pass
        elif ex.reason == ExitReason.EPT_VIOLATION and on_ept is not None and on_ept(l2, ex):
            continue  # the policy injected an event; the instruction is retried after it
        else:
            out.stopped_at = ex
            return out
        l2.skip(ex)
    raise AssertionError(f"the firmware made {MAX_EXITS} exits without ending: {out.console!r}")


def refuse_code_writes(l2: L2Context, ex: L2Exit) -> bool:
    if ex.qualification & EPTV_WRITE and L2_RAM <= ex.gpa < L2_RAM + 0x1000:
        inject_gp(l2)
        return True
    return False


# --- the build --------------------------------------------------------------------------------
def test_build_is_reproducible_wherever_the_sources_live(
    firmware: Firmware, tmp_path: Path
) -> None:
    again = build_firmware(output=tmp_path / "again.bin")
    copy = tmp_path / "elsewhere" / "l2-firmware"
    shutil.copytree(SOURCE_DIR, copy)
    moved = build_firmware(copy, tmp_path / "moved.bin")
    assert again.image == firmware.image == moved.image
    assert (tmp_path / "again.bin").read_bytes() == firmware.image


def test_one_changed_character_changes_the_image(firmware: Firmware, tmp_path: Path) -> None:
    copy = tmp_path / "l2-firmware"
    shutil.copytree(SOURCE_DIR, copy)
    main = copy / "src" / "main.c"
    main.write_text(main.read_text().replace("started as", "startet as"))
    assert build_firmware(copy, tmp_path / "x.bin").image != firmware.image


def test_image_layout_separates_code_from_data(firmware: Firmware) -> None:
    layout = firmware.layout
    assert layout.has_header and layout.text_end % 0x1000 == 0
    assert layout.text_end <= layout.data_end == len(firmware.image) <= layout.bss_end
    assert firmware.image[layout.payload_start : layout.payload_end].startswith(
        b"tdpvtpm L2 payload"
    )
    assert L2ImageLayout.parse(firmware.image) == layout


def test_absolute_relocation_fails_the_build(tmp_path: Path) -> None:
    copy = tmp_path / "l2-firmware"
    shutil.copytree(SOURCE_DIR, copy)
    (copy / "src" / "table.c").write_text(
        'static const char *const names[] = {"a", "b"};\n'
        "const char *pick(int i);\nconst char *pick(int i) { return names[i]; }\n"
    )
    with pytest.raises(FirmwareBuildError, match="without relocations"):
        build_firmware(copy, tmp_path / "x.bin")


def test_compiler_error_names_the_file(tmp_path: Path) -> None:
    copy = tmp_path / "l2-firmware"
    shutil.copytree(SOURCE_DIR, copy)
    (copy / "src" / "broken.c").write_text("int broken(void) { return }\n")
    with pytest.raises(FirmwareBuildError, match=r"broken\.c"):
        build_firmware(copy, tmp_path / "x.bin")


# --- the firmware on the simulated module ------------------------------------------------------
def test_selftest_lines_and_the_first_unanswered_exit(firmware: Firmware) -> None:
    out = run(firmware, on_ept=refuse_code_writes)
    lines = out.console.splitlines()
    assert lines[:5] == [
        "L2 firmware: started as L2 0x0",
        "selftest: cpuid-tdx-vendor ok",
        "selftest: cpuid-tdp-guest ok",
        "selftest: interrupt ok",
        "selftest: code-read-only ok",
    ]
    # The MMIO read of the CRB interface register is the next exit: this L1 has no CRB model.
    assert out.stopped_at is not None
    assert out.stopped_at.reason == ExitReason.EPT_VIOLATION
    assert out.stopped_at.gpa == CRB_INTF_ID_GPA


def test_wrong_cpuid_answers_fail_those_checks_only(firmware: Firmware) -> None:
    out = run(firmware, cpuid={}, on_ept=refuse_code_writes)
    assert "selftest: cpuid-tdx-vendor FAIL (ebx=0x0)" in out.console
    assert "selftest: cpuid-tdp-guest FAIL (ebx=0x0)" in out.console
    assert "selftest: interrupt ok" in out.console


def test_undelivered_interrupt_fails_after_bounded_waits(firmware: Firmware) -> None:
    out = run(firmware, on_ept=refuse_code_writes, deliver_self_ipi=False)
    assert "selftest: interrupt FAIL (delivered=0x0)" in out.console
    assert out.exits.count(ExitReason.HLT) == 64  # waits in HLT, bounded, never spins


def test_unexpected_exception_is_reported_and_ends_with_code_3(firmware: Firmware) -> None:
    def gp_everywhere(l2: L2Context, ex: L2Exit) -> bool:
        inject_gp(l2)
        return True

    out = run(firmware, on_ept=gp_everywhere)
    assert out.exit_code == 3
    last = out.console.splitlines()[-1]
    assert last.startswith("L2 firmware: unexpected exception vector 0xd error 0x0 rip 0x")


def c_defines() -> dict[str, set[int]]:
    """Every numeric #define of the firmware's sources, each name with the values it is given."""
    found: dict[str, set[int]] = {}
    for source in sorted((SOURCE_DIR / "src").glob("*.[ch]")):
        for m in re.finditer(r"#define (\w+) (0x[0-9A-Fa-f]+|\d+)u?l?\b", source.read_text()):
            found.setdefault(m.group(1), set()).add(int(m.group(2), 0))
    return found


def test_the_firmwares_constants_are_the_definitions() -> None:
    """The C sources repeat a few facts; each must equal the one place Python declares it, or for
    TPM 2.0 and TCG event-log values, tpm2-pytss's independent definitions."""
    from tpm2_pytss.constants import TPM2_ALG, TPM2_CC, TPM2_RH, TPM2_ST, TPMA_NV

    from svsm.crb import CrbRegister
    from tdxdefs import firmware_log, relay
    from tdxdefs.eventlog import (
        DigestAlgorithm,
        EventSize,
        EventType,
        SpecIdAlgorithm,
        SpecIdEvent,
        TcgPcrEvent,
        TcgPcrEvent2Prefix,
        VendorInfoSize,
    )
    from tdxdefs.l2boot import TPM_CRB_BASE
    from tdxdefs.tpm import TpmaNv

    digests = TPM2_ALG.SHA256, TPM2_ALG.SHA384
    sizes = {TPM2_ALG.SHA256: 32, TPM2_ALG.SHA384: 48}
    expected = {
        "RELAY_VECTOR": relay.L2_RELAY_VECTOR,
        "L2_DOORBELL_PORT": relay.L2_DOORBELL_PORT,
        "MAILBOX_HEADER_SIZE": relay.MailboxHeader.SIZE,
        "MAX_TPM_MESSAGE": relay.MAX_TPM_MESSAGE,
        "RELAY_STATE_COMMAND": relay.RelayState.COMMAND,
        "RELAY_STATE_RESPONSE": relay.RelayState.RESPONSE,
        "RELAY_STATE_ERROR": relay.RelayState.ERROR,
        "TPM_CRB_BASE": TPM_CRB_BASE,
        "TPM_CRB_INTF_ID": CrbRegister.INTF_ID,
        "CRB_LOC_CTRL": CrbRegister.LOC_CTRL,
        "CRB_LOC_STATE": CrbRegister.LOC_STATE,
        "CRB_CTRL_REQ": CrbRegister.CTRL_REQ,
        "CRB_CTRL_STS": CrbRegister.CTRL_STS,
        "CRB_CTRL_START": CrbRegister.CTRL_START,
        "CRB_CTRL_CMD_SIZE": CrbRegister.CTRL_CMD_SIZE,
        "CRB_CTRL_CMD_LADDR": CrbRegister.CTRL_CMD_LADDR,
        "CRB_CTRL_CMD_HADDR": CrbRegister.CTRL_CMD_HADDR,
        # the measured boot (tdxdefs.firmware_log)
        "PAYLOAD_PCR": firmware_log.PAYLOAD_PCR,
        "PAYLOAD_EVENT_TYPE": firmware_log.PAYLOAD_EVENT_TYPE,
        "PAYLOAD_MAX": firmware_log.PAYLOAD_MAX,
        "EVENT_LOG_NV_INDEX": firmware_log.EVENT_LOG_NV_INDEX,
        "EVENT_LOG_NV_ATTRIBUTES": firmware_log.EVENT_LOG_NV_ATTRIBUTES,
        "EVENT_LOG_MAX": firmware_log.EVENT_LOG_MAX,
        "NV_WRITE_MAX": firmware_log.NV_WRITE_MAX,
        # the event-log records (tdxdefs.eventlog)
        "EV_NO_ACTION": EventType.EV_NO_ACTION,
        "SHA256_SIZE": sizes[TPM2_ALG.SHA256],
        "SHA384_SIZE": sizes[TPM2_ALG.SHA384],
        "SPEC_ID_EVENT_SIZE": TcgPcrEvent.SIZE
        + SpecIdEvent.SIZE
        + len(digests) * SpecIdAlgorithm.SIZE
        + VendorInfoSize.SIZE,
        "EVENT2_FIXED_SIZE": TcgPcrEvent2Prefix.SIZE
        + sum(DigestAlgorithm.SIZE + sizes[alg] for alg in digests)
        + EventSize.SIZE,
        # TPM 2.0 values, as tpm2-pytss has them
        "TPM_ST_SESSIONS": TPM2_ST.SESSIONS,
        "TPM_RS_PW": TPM2_RH.PW,
        "TPM_RH_PLATFORM": TPM2_RH.PLATFORM,
        "TPM_CC_NV_DEFINE_SPACE": TPM2_CC.NV_DefineSpace,
        "TPM_CC_NV_WRITE": TPM2_CC.NV_Write,
        "TPM_CC_NV_WRITE_LOCK": TPM2_CC.NV_WriteLock,
        "TPM_CC_PCR_EVENT": TPM2_CC.PCR_Event,
        "TPM_ALG_SHA1": TPM2_ALG.SHA1,
        "TPM_ALG_SHA256": TPM2_ALG.SHA256,
        "TPM_ALG_SHA384": TPM2_ALG.SHA384,
        "TPM_ALG_SHA512": TPM2_ALG.SHA512,
        "TPM_ALG_SM3_256": TPM2_ALG.SM3_256,
    }
    defines = c_defines()
    assert {name: defines.get(name) for name in expected} == {
        name: {int(value)} for name, value in expected.items()
    }
    # the index's attribute bits are TPM 2.0's (Part 2, TPMA_NV)
    assert {bit.name: int(bit) for bit in TpmaNv} == {
        name: int(getattr(TPMA_NV, name)) for name in TpmaNv.__members__
    }
