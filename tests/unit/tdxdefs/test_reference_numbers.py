"""The definitions against numbers spelled out here from the public specifications (Intel TDX Module
v1.5 ABI and TD Partitioning specifications, GHCI v1.5, the DCAP quote format, the TCG PC Client
event log), never computed from tdxdefs itself, so a wrong constant or layout fails a test."""

from __future__ import annotations

import pytest

from tdxdefs import eventlog, getquote, guest_state, metadata, quote, report, tdcall, tdvmcall
from tdxdefs.attributes import GpaAttr, attr_word, pack_attr
from tdxdefs.layout import Layout
from tdxdefs.vmcs import EptViolation, ExitReason, Vmcs, Width, width_of

LEAVES = {
    "VP_VMCALL": 0,
    "VP_INFO": 1,
    "MR_RTMR_EXTEND": 2,
    "VP_VEINFO_GET": 3,
    "MR_REPORT": 4,
    "VP_CPUIDVE_SET": 5,
    "MEM_PAGE_ACCEPT": 6,
    "VM_RD": 7,
    "VM_WR": 8,
    "VP_RD": 9,
    "VP_WR": 10,
    "SYS_RD": 11,
    "SYS_RDALL": 12,
    "SERVTD_RD": 18,
    "SERVTD_WR": 20,
    "MR_VERIFYREPORT": 22,
    "MEM_PAGE_ATTR_RD": 23,
    "MEM_PAGE_ATTR_WR": 24,
    "VP_ENTER": 25,
    "VP_INVEPT": 26,
    "VP_INVVPID": 27,
}

STATUSES = {
    "TDX_SUCCESS": 0x0000000000000000,
    "TDX_OPERAND_INVALID": 0xC000010000000000,
    "TDX_OPERAND_BUSY": 0x8000020000000000,
    "TDX_NO_VALID_VE_INFO": 0xC000070400000000,
    "TDX_PAGE_ALREADY_ACCEPTED": 0x00000B0A00000000,
    "TDX_PAGE_SIZE_MISMATCH": 0xC0000B0B00000000,
    "TDX_L2_SEPT_WALK_FAILED": 0xC0000B0F00000000,
    "TDX_L2_SEPT_ENTRY_NOT_FREE": 0xC0000B1000000000,
    "TDX_PAGE_ATTR_INVALID": 0xC0000B1100000000,
    "TDX_L2_SEPT_PAGE_NOT_PROVIDED": 0xC0000B1200000000,
    "TDX_METADATA_FIELD_ID_INCORRECT": 0xC0000C0000000000,
    "TDX_METADATA_FIELD_NOT_WRITABLE": 0xC0000C0100000000,
    "TDX_METADATA_FIELD_NOT_READABLE": 0xC0000C0200000000,
    "TDX_METADATA_FIELD_VALUE_NOT_VALID": 0xC0000C0300000000,
    "TDX_L2_EXIT_HOST_ROUTED_ASYNC": 0x0000110000000000,
    "TDX_L2_EXIT_HOST_ROUTED_TDVMCALL": 0x0000110100000000,
    "TDX_L2_EXIT_PENDING_INTERRUPT": 0x0000110200000000,
    "TDX_PENDING_INTERRUPT": 0x0000112000000000,
    "TDX_TD_EXIT_BEFORE_L2_ENTRY": 0x0000114000000000,
    "TDX_GLA_NOT_CANONICAL": 0xC000116000000000,
}


def test_tdcall_leaf_numbers() -> None:
    assert {leaf.name: int(leaf) for leaf in tdcall.Leaf} == LEAVES
    assert tdcall.Leaf.MEM_PAGE_ATTR_WR.spec_name == "TDG.MEM.PAGE.ATTR.WR"
    assert tdcall.LEAF_NAMES[6] == "TDG.MEM.PAGE.ACCEPT"


@pytest.mark.parametrize(("name", "value"), sorted(STATUSES.items()))
def test_completion_status_codes(name: str, value: int) -> None:
    assert getattr(tdcall, name) == value
    assert tdcall.status_name(value | 0x2A) == f"{name} ({value | 0x2A:#018x})"


def test_status_helpers() -> None:
    assert tdcall.status_class(0xC000010000000008) == 0xC000010000000000
    assert tdcall.status_details(0xC0000100000000AA) == 170 == tdcall.OperandId.L2_VAPIC_GPA
    assert tdcall.is_error(0x8000020000000000) and not tdcall.is_error(0x00000B0A00000000)
    assert tdcall.OperandId.R8 == 8 and tdcall.OperandId.RCX == 1


def test_tdvmcall_sub_functions_and_statuses() -> None:
    assert {s.name: int(s) for s in tdvmcall.Tdvmcall} == {
        "CPUID": 0x0A,
        "HLT": 0x0C,
        "IO": 0x1E,
        "RDMSR": 0x1F,
        "WRMSR": 0x20,
        "REQUEST_MMIO": 0x30,
        "MAP_GPA": 0x10001,
        "GET_QUOTE": 0x10002,
        "REPORT_FATAL_ERROR": 0x10003,
        "SETUP_EVENT_NOTIFY_INTERRUPT": 0x10004,
        "SERVICE": 0x10005,
    }
    assert {s.name: int(s) for s in tdvmcall.TdvmcallStatus} == {
        "SUCCESS": 0,
        "RETRY": 1,
        "OPERAND_INVALID": 0x8000000000000000,
        "GPA_INUSE": 0x8000000000000001,
        "ALIGN_ERROR": 0x8000000000000002,
    }


def test_metadata_field_ids() -> None:
    assert metadata.NUM_L2_VMS_FIELD == 0x9010000100000005
    assert metadata.NOTIFY_ENABLES_FIELD == 0x9100000000000010
    assert [metadata.l2_ctls_field_id(vm) for vm in (1, 2, 3)] == [
        0xA020000300000051,
        0xA020000300000052,
        0xA020000300000053,
    ]
    assert metadata.l2_vapic_gpa_field_id(1) == 0xA020000300000111
    # class 36 (VM1 VMCS), context 2 (vCPU), element size 3 (64 bits), GUEST_RIP 0x681E
    assert metadata.l2_vmcs_field_id(1, 0x681E, 3) == 0x242000030000681E
    assert metadata.l2_vmcs_field_id(3, 0x681E, 3) == 0x342000030000681E  # class 52
    assert metadata.msr_bitmap_field_id(2, 5) == 0x2D20000300000005  # class 45
    assert int(metadata.L2Ctls.ENABLE_SHARED_EPTP | metadata.L2Ctls.ENABLE_TDVMCALL) == 0x3


def test_vmcs_encodings_and_exit_reasons() -> None:
    assert (Vmcs.GUEST_RIP, Vmcs.GUEST_RFLAGS, Vmcs.GUEST_INTR_STATUS) == (0x681E, 0x6820, 0x810)
    assert (Vmcs.VIRTUAL_APIC_PAGE_ADDR, Vmcs.EPT_POINTER, Vmcs.PIN_BASED_CONTROLS) == (
        0x2012,
        0x201A,
        0x4000,
    )
    assert width_of(0x681E) is Width.NATURAL and width_of(0x2012) is Width.W64
    assert width_of(0x4000) is Width.W32 and width_of(0x0810) is Width.W16
    assert (ExitReason.CPUID, ExitReason.HLT, ExitReason.IO, ExitReason.EPT_VIOLATION) == (
        10,
        12,
        30,
        48,
    )
    assert (ExitReason.VMCALL, ExitReason.TDCALL, ExitReason.MSR_WRITE) == (18, 77, 32)
    assert int(EptViolation.READ | EptViolation.GLA_VALID | EptViolation.TRANSLATED) == 0x181


def test_gpa_attribute_words() -> None:
    assert [int(bit) for bit in GpaAttr] == [1, 2, 4, 8, 16, 32, 64, 128, 0x8000]
    packed = pack_attr({0: 0x800F, 1: 0x8003, 3: 0x0001})
    assert packed == 0x0001_0000_8003_800F
    assert attr_word(packed, 1) == 0x8003 and attr_word(packed, 2) == 0


def _offsets(layout: type[Layout]) -> dict[str, int]:
    return {name: layout.offset(name) for name, _ in layout.FIELDS}


def test_l2_enter_guest_state_layout() -> None:
    offsets = _offsets(guest_state.L2EnterGuestState)
    assert (offsets["rax"], offsets["r15"], offsets["rflags"]) == (0x00, 0x78, 0x80)
    assert (offsets["rip"], offsets["ssp"], offsets["guest_interrupt_status"]) == (0x88, 0x90, 0x98)
    assert guest_state.L2EnterGuestState.SIZE == 154


def test_tdreport_layout() -> None:
    assert report.ReportMacStruct.SIZE + report.TeeTcbInfo.SIZE + report.TdInfoStruct.SIZE == 1024
    assert report.TDREPORT_STRUCT_SIZE == tdcall.TDREPORT_SIZE == 1024
    assert (report.REPORTDATA_OFFSET, report.MAC_FIELD_OFFSET) == (128, 224)
    assert (report.TEE_TCB_INFO_HASH_OFFSET, report.TEE_INFO_HASH_OFFSET) == (32, 80)
    assert (report.TEE_TCB_INFO_OFFSET, report.TDINFO_OFFSET) == (256, 512)
    tcb = _offsets(report.TeeTcbInfo)
    assert (tcb["mrseam"], tcb["attributes"], tcb["tee_tcb_svn2"]) == (24, 120, 128)
    info = _offsets(report.TdInfoStruct)
    assert (512 + info["mrtd"], 512 + info["rtmr0"], 512 + info["servtd_hash"]) == (528, 720, 912)
    assert report.TeeTcbInfo.valid_bitmap() == 0xFFFE  # granules 1..15: SVN to ATTRIBUTES
    assert report.TEE_TYPE_TDX == 0x81


def test_quote_layouts() -> None:
    assert (quote.QuoteHeader.SIZE, quote.TdQuoteBody.SIZE, quote.SgxReportBody.SIZE) == (
        48,
        584,
        384,
    )
    assert quote.TdQuoteBody15.SIZE == 648 and quote.QuoteBodyDescriptor.SIZE == 6
    header = _offsets(quote.QuoteHeader)
    assert (header["tee_type"], header["qe_vendor_id"], header["user_data"]) == (4, 12, 28)
    body = _offsets(quote.TdQuoteBody)
    assert (body["mrtd"], body["rtmr0"], body["reportdata"]) == (136, 328, 520)
    body15 = _offsets(quote.TdQuoteBody15)
    assert (body15["tee_tcb_svn2"], body15["mrservicetd"]) == (584, 600)
    assert quote.TdQuoteBody15Ex.SIZE == 885 and quote.QuoteBodyType.TD_REPORT_15_EX == 4
    ex = _offsets(quote.TdQuoteBody15Ex)
    assert (ex["vm_index"], ex["td_id"], ex["dev_info_hash"], ex["init_servtd_hash"]) == (
        648,
        649,
        681,
        729,
    )
    assert (ex["init_tee_fmspc"], ex["cur_servtd_hash"], ex["cur_servtd_attributes"]) == (
        817,
        829,
        877,
    )
    assert quote.SgxReportBody.offset("report_data") == 320
    assert quote.SgxReportBody.offset("isv_prod_id") == 256
    assert (quote.BODY_OFFSET, quote.REPORTDATA_OFFSET, quote.SIGNATURE_DATA_LEN_OFFSET) == (
        48,
        568,
        632,
    )
    assert quote.SIGNATURE_DATA_OFFSET == 636
    assert quote.INTEL_QE_VENDOR_ID.hex() == "939a7233f79c4ca9940a0db3957f0607"
    assert {t.name: int(t) for t in quote.CertificationDataType} == {
        "PPID_CLEARTEXT": 1,
        "PPID_RSA2048": 2,
        "PPID_RSA3072": 3,
        "PCK_LEAF": 4,
        "PCK_CERT_CHAIN": 5,
        "QE_REPORT": 6,
        "PLATFORM_MANIFEST": 7,
    }
    assert (quote.ATT_KEY_TYPE_ECDSA_P256, quote.QuoteBodyType.TD_REPORT_15) == (2, 3)


def test_getquote_framing() -> None:
    assert getquote.GetQuoteHeader.SIZE == 24 and getquote.QgsMsgHeader.SIZE == 16
    assert (getquote.STATUS_OFFSET, getquote.IN_LEN_OFFSET, getquote.OUT_LEN_OFFSET) == (8, 16, 20)
    assert (getquote.QGS_MSG_OFFSET, getquote.QGS_BODY_OFFSET) == (28, 44)
    assert getquote.MessageLength(0x10203).pack() == b"\x00\x01\x02\x03"  # big-endian
    assert getquote.GET_QUOTE_IN_FLIGHT == 0xFFFFFFFFFFFFFFFF
    assert (getquote.QGS_GET_QUOTE_REQ, getquote.QGS_GET_QUOTE_RESP) == (0, 1)


def test_event_log_records() -> None:
    assert eventlog.TcgPcrEvent.SIZE == 32 and eventlog.SpecIdEvent.SIZE == 28
    assert eventlog.TcgPcrEvent2Head.SIZE == 14
    assert (eventlog.EV_NO_ACTION, eventlog.EV_SEPARATOR) == (3, 4)
    assert (eventlog.EV_S_CRTM_VERSION, eventlog.EV_PLATFORM_CONFIG_FLAGS) == (8, 0xA)
    assert eventlog.TPM_ALG_SHA384 == 0x000C
    assert eventlog.SPEC_ID_SIGNATURE == b"Spec ID Event03\x00"


def test_tpm_constants_agree_with_tpm2_pytss() -> None:
    """tdxdefs.tpm against tpm2-pytss's own tables of TCG TPM 2.0 Library, Part 2."""
    from tpm2_pytss.constants import (
        TPM2_ALG,
        TPM2_ECC,
        TPM2_GENERATED,
        TPM2_ST,
        TPMA_NV,
        TPMA_OBJECT,
    )

    from tdxdefs import tpm

    assert {a.name: int(a) for a in tpm.TpmAlg} == {
        name: int(getattr(TPM2_ALG, name)) for name in tpm.TpmAlg.__members__
    }
    assert (tpm.EccCurve.NIST_P256, tpm.EccCurve.NIST_P384) == (
        TPM2_ECC.NIST_P256,
        TPM2_ECC.NIST_P384,
    )
    for flag in tpm.TpmaObject:  # tpm2-pytss spells them without underscores, NO_DA as NODA
        assert flag.name is not None
        theirs = "SIGN_ENCRYPT" if flag.name == "SIGN_ENCRYPT" else flag.name.replace("_", "")
        assert int(flag) == int(getattr(TPMA_OBJECT, theirs))
    for bit in tpm.TpmaNv:
        assert bit.name is not None and int(bit) == int(getattr(TPMA_NV, bit.name))
    assert (tpm.TPM_GENERATED_VALUE, tpm.TPM_ST_ATTEST_QUOTE) == (
        TPM2_GENERATED.VALUE,
        TPM2_ST.ATTEST_QUOTE,
    )
    assert tpm.DIGEST_SIZES == {0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32}
