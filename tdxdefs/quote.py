"""TD quote layouts: the v4 header, TD quote body and ECDSA signature data, and the v5 additions.

Intel SGX ECDSA Quote Library API (DCAP), appendix "Quote format" for TDX: version 4 is a 48-byte
header, the 584-byte TD quote body (TD report 1.0: sgx_report2_body_t), a u32 signature data
length and the ECDSA signature data (64-byte P-256 signature over header and body, 64-byte
attestation key, certification data: type u16, size u32, data). Certification data type 6 holds
the QE report (the 384-byte SGX REPORT body, Intel SGX Software Developer's Manual "REPORT"), its
signature, the QE authentication data and a nested certification data of type 5 (the PCK
certificate chain). Version 5 inserts a body descriptor (type u16, size u32) after the header; a
type 3 body is the TDX 1.5 TD report, the v4 body plus TEE_TCB_SVN2 and MRSERVICETD.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from tdxdefs.layout import Layout

QUOTE_VERSION_4 = 4
QUOTE_VERSION_5 = 5
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
ECDSA_P256_SIGNATURE_SIZE = 64
ECDSA_P256_KEY_SIZE = 64
ECDSA_P256_COORDINATE_SIZE = 32
QE_REPORT_DATA_BINDING_SIZE = 32  # SHA-256(attestation key || QE auth data), then zeros
SGX_REPORT_DATA_SIZE = 64


class AttestationKeyType(IntEnum):
    """att_key_type in the quote header."""

    ECDSA_P256 = 2
    ECDSA_P384 = 3


ATT_KEY_TYPE_ECDSA_P256 = int(AttestationKeyType.ECDSA_P256)
ATT_KEY_TYPE_ECDSA_P384 = int(AttestationKeyType.ECDSA_P384)


class CertificationDataType(IntEnum):
    """Certification data types of the ECDSA signature data."""

    PPID_CLEARTEXT = 1
    PPID_RSA2048 = 2
    PPID_RSA3072 = 3
    PCK_LEAF = 4
    PCK_CERT_CHAIN = 5
    QE_REPORT = 6
    PLATFORM_MANIFEST = 7


class QuoteBodyType(IntEnum):
    """Body descriptor type of a version 5 quote."""

    SGX_ENCLAVE_REPORT = 1
    TD_REPORT_10 = 2
    TD_REPORT_15 = 3
    TD_REPORT_15_EX = 4


@dataclass(frozen=True, slots=True)
class QuoteHeader(Layout):
    """Quote header: 48 bytes at offset 0 (versions 4 and 5).

    Bytes 8..11 are reserved in v4 (the v3 header carries the QE SVN and PCE SVN there); they are
    named after v3 and left unchecked, so quotes from any quoting enclave parse.
    """

    NAME: ClassVar[str] = "header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("version", "H"),
        ("att_key_type", "H"),
        ("tee_type", "I"),
        ("qe_svn", "H"),
        ("pce_svn", "H"),
        ("qe_vendor_id", "16s"),
        ("user_data", "20s"),
    )
    SIZE: ClassVar[int] = 48

    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True, slots=True)
class TdQuoteBody(Layout):
    """TD quote body for TD report 1.0 (sgx_report2_body_t): 584 bytes at offset 48 of v4."""

    NAME: ClassVar[str] = "td_quote_body"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("tee_tcb_svn", "16s"),
        ("mrseam", "48s"),
        ("mrsignerseam", "48s"),
        ("seamattributes", "Q"),
        ("tdattributes", "Q"),
        ("xfam", "Q"),
        ("mrtd", "48s"),
        ("mrconfigid", "48s"),
        ("mrowner", "48s"),
        ("mrownerconfig", "48s"),
        ("rtmr0", "48s"),
        ("rtmr1", "48s"),
        ("rtmr2", "48s"),
        ("rtmr3", "48s"),
        ("reportdata", "64s"),
    )
    SIZE: ClassVar[int] = 584

    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seamattributes: int
    tdattributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    reportdata: bytes

    @property
    def attributes(self) -> int:
        """The TD's ATTRIBUTES (TDATTRIBUTES in the quote body)."""
        return self.tdattributes

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return (self.rtmr0, self.rtmr1, self.rtmr2, self.rtmr3)


@dataclass(frozen=True, slots=True)
class QuoteBodyDescriptor(Layout):
    """Version 5 body descriptor: 6 bytes at offset 48, then the body it describes."""

    NAME: ClassVar[str] = "body_descriptor"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("body_type", "H"), ("size", "I"))
    SIZE: ClassVar[int] = 6

    body_type: int
    size: int


@dataclass(frozen=True, slots=True)
class TdQuoteBody15(TdQuoteBody):
    """TD quote body for TD report 1.5 (version 5, body type 3): the 1.0 body, then TEE_TCB_SVN2
    and MRSERVICETD; 648 bytes."""

    NAME: ClassVar[str] = "td_quote_body_1_5"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        *TdQuoteBody.FIELDS,
        ("tee_tcb_svn2", "16s"),
        ("mrservicetd", "48s"),
    )
    SIZE: ClassVar[int] = 648

    tee_tcb_svn2: bytes
    mrservicetd: bytes


L1_VM_INDEX = 0  # TD report 1.5 extended: the VM index of a report L1 (or a plain TD) made


@dataclass(frozen=True, slots=True)
class TdQuoteBody15Ex(TdQuoteBody15):
    """TD quote body for TD report 1.5 with extensions (version 5, body type 4; Intel DCAP's
    `sgx_quote_5.h`), 885 bytes: the 1.5 body, then the VM index the report was made for (0 for
    the L1 VMM or an unpartitioned TD, 1-3 for an L2 VM of a partitioned TD), the TD's
    instance ID, a hash of its device information, the service-TD bindings at creation and now,
    and the platform TCB at creation. A verifier appraises it as a 1.5 body."""

    NAME: ClassVar[str] = "td_quote_body_1_5_ex"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        *TdQuoteBody15.FIELDS,
        ("vm_index", "B"),
        ("td_id", "32s"),
        ("dev_info_hash", "48s"),
        ("init_servtd_hash", "48s"),
        ("init_servtd_attributes", "8s"),
        ("init_cpu_svn", "16s"),
        ("init_tee_tcb_svn", "16s"),
        ("init_tee_fmspc", "12s"),
        ("cur_servtd_hash", "48s"),
        ("cur_servtd_attributes", "8s"),
    )
    SIZE: ClassVar[int] = 885

    vm_index: int
    td_id: bytes
    dev_info_hash: bytes
    init_servtd_hash: bytes
    init_servtd_attributes: bytes
    init_cpu_svn: bytes
    init_tee_tcb_svn: bytes
    init_tee_fmspc: bytes
    cur_servtd_hash: bytes
    cur_servtd_attributes: bytes


@dataclass(frozen=True, slots=True)
class SgxReportBody(Layout):
    """SGX REPORT body (sgx_report_body_t), 384 bytes: the QE report in certification type 6."""

    NAME: ClassVar[str] = "qe_report_body"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("cpu_svn", "16s"),
        ("misc_select", "I"),
        ("reserved1", "12s"),
        ("isv_ext_prod_id", "16s"),
        ("attributes", "16s"),
        ("mr_enclave", "32s"),
        ("reserved2", "32s"),
        ("mr_signer", "32s"),
        ("reserved3", "32s"),
        ("config_id", "64s"),
        ("isv_prod_id", "H"),
        ("isv_svn", "H"),
        ("config_svn", "H"),
        ("reserved4", "42s"),
        ("isv_family_id", "16s"),
        ("report_data", "64s"),
    )
    SIZE: ClassVar[int] = 384

    cpu_svn: bytes
    misc_select: int
    reserved1: bytes
    isv_ext_prod_id: bytes
    attributes: bytes
    mr_enclave: bytes
    reserved2: bytes
    mr_signer: bytes
    reserved3: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    reserved4: bytes
    isv_family_id: bytes
    report_data: bytes


@dataclass(frozen=True, slots=True)
class CertificationDataHeader(Layout):
    """Certification data header: type u16, size u32; `size` bytes of data follow."""

    NAME: ClassVar[str] = "certification_data"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("cert_type", "H"), ("size", "I"))
    SIZE: ClassVar[int] = 6

    cert_type: int
    size: int


@dataclass(frozen=True, slots=True)
class SignatureDataLength(Layout):
    """The u32 length of the signature data, right after the body."""

    NAME: ClassVar[str] = "signature_data_len"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("length", "I"),)
    SIZE: ClassVar[int] = 4

    length: int


@dataclass(frozen=True, slots=True)
class QeAuthDataSize(Layout):
    """The u16 size of the QE authentication data inside certification data type 6."""

    NAME: ClassVar[str] = "qe_auth_data"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (("size", "H"),)
    SIZE: ClassVar[int] = 2

    size: int


HEADER_OFFSET = 0
ATT_KEY_TYPE_OFFSET = HEADER_OFFSET + QuoteHeader.offset("att_key_type")
TEE_TYPE_OFFSET = HEADER_OFFSET + QuoteHeader.offset("tee_type")
BODY_OFFSET = HEADER_OFFSET + QuoteHeader.SIZE
SIGNATURE_DATA_LEN_OFFSET = (
    BODY_OFFSET + TdQuoteBody.SIZE
)  # v4: what the signature covers ends here
SIGNATURE_DATA_OFFSET = SIGNATURE_DATA_LEN_OFFSET + SignatureDataLength.SIZE
QUOTE_V4_SIGNED_SIZE = SIGNATURE_DATA_LEN_OFFSET
V5_BODY_DESCRIPTOR_OFFSET = BODY_OFFSET  # v5: the descriptor sits where the v4 body starts
V5_BODY_OFFSET = V5_BODY_DESCRIPTOR_OFFSET + QuoteBodyDescriptor.SIZE
TD_BODY_LAYOUTS: dict[int, type[TdQuoteBody]] = {
    QuoteBodyType.TD_REPORT_10: TdQuoteBody,
    QuoteBodyType.TD_REPORT_15: TdQuoteBody15,
    QuoteBodyType.TD_REPORT_15_EX: TdQuoteBody15Ex,
}
REPORTDATA_OFFSET = BODY_OFFSET + TdQuoteBody.offset("reportdata")
MRTD_OFFSET = BODY_OFFSET + TdQuoteBody.offset("mrtd")
