"""Attesters: what turns the vTPM CA's REPORTDATA into a TD quote, and the fake one for tests.

REPORTDATA is SHA-384 of the CA public key, as an uncompressed SEC1 point 0x04||X||Y, followed by
16 zero bytes, as Intel's TD-partitioning vTPM prototype computes it (its design guide names the EK
hash in one place; its code and its other sections use the CA public key, and so do we).

`FakeAttester` returns a quote with the TDX quote v4 layout (`tdxdefs.quote`) signed by a throwaway
attestation key, with "FAKE" in the QE vendor ID, the user data and the certification data, so no
verifier can mistake it for a real one. It is only ever chosen by name
(`attester_from_name("fake")`): nothing falls back to it. `TsmAttester` ("tsm") asks the Linux
configfs-tsm interface of a real TD guest.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from tdxdefs.errors import LayoutError
from tdxdefs.eventlog import (
    EV_NO_ACTION,
    EV_SEPARATOR,
    MR_INDEX_OF_RTMR0,
    ONE_DIGEST,
    SEPARATOR_EVENT,
    SHA1_SIZE,
    SPEC_ID_SIGNATURE,
    SPEC_VERSION_MAJOR,
    TPM_ALG_SHA384,
    UINTN_SIZE_64BIT,
    EventSize,
    SpecIdAlgorithm,
    SpecIdEvent,
    TcgPcrEvent,
    TcgPcrEvent2Head,
    VendorInfoSize,
)
from tdxdefs.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    BODY_OFFSET,
    ECDSA_P256_COORDINATE_SIZE,
    ECDSA_P256_SIGNATURE_SIZE,
    QUOTE_V4_SIGNED_SIZE,
    QUOTE_VERSION_4,
    REPORTDATA_OFFSET,
    CertificationDataHeader,
    CertificationDataType,
    QeAuthDataSize,
    QuoteHeader,
    SgxReportBody,
    SignatureDataLength,
    TdQuoteBody,
)
from tdxdefs.report import TEE_TYPE_TDX
from tdxdefs.tdcall import REPORTDATA_SIZE, RTMR_COUNT, SHA384_SIZE
from vtpm.errors import VtpmError

REPORT_DATA_SIZE = REPORTDATA_SIZE
FAKE_QE_VENDOR_ID = b"FAKE-QE-VENDOR!!"
FAKE_USER_DATA = b"FAKE TD QUOTE NO TDX"
FAKE_PCK_CHAIN = b"FAKE: test attester, no PCK certificate chain, not bound to any TD\n"
assert len(FAKE_QE_VENDOR_ID) == 16 and len(FAKE_USER_DATA) == 20


class AttesterError(VtpmError, RuntimeError):
    """An attester could not produce a quote or an event log; manufacture must stop."""


class UnknownAttesterError(AttesterError, LookupError):
    """No attester is registered under the name asked for."""


class BindingError(VtpmError, ValueError):
    """A quote does not carry the REPORTDATA that binds it to the vTPM CA key."""


@runtime_checkable
class Attester(Protocol):
    """Produces a TD quote over REPORTDATA and the CC event log that explains its RTMRs."""

    @property
    def name(self) -> str: ...

    @property
    def simulated(self) -> bool:
        """True when the quote is not from real TDX hardware (fake or simulated)."""
        ...

    def quote(self, report_data: bytes) -> bytes: ...

    def event_log(self) -> bytes: ...


def report_data_for(ca_public_point: bytes) -> bytes:
    """REPORTDATA binding the CA key: SHA-384 of its uncompressed SEC1 point, then 16 zero bytes."""
    if not ca_public_point or ca_public_point[0] != 0x04:
        raise BindingError("CA public key must be an uncompressed SEC1 point (0x04||X||Y)")
    digest = hashlib.sha384(ca_public_point).digest()
    return digest + bytes(REPORT_DATA_SIZE - len(digest))


@dataclass(frozen=True)
class QuoteV4:
    """The fields of a TDX quote v4 that the vTPM looks at."""

    version: int
    att_key_type: int
    tee_type: int
    qe_vendor_id: bytes
    user_data: bytes
    mrtd: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes


def parse_quote_v4(quote: bytes) -> QuoteV4:
    """Parse the header and TD body of a TDX quote v4 (no signature check)."""
    if len(quote) < QUOTE_V4_SIGNED_SIZE:
        raise BindingError(
            f"TD quote is {len(quote)} bytes, shorter than header plus body "
            f"({QUOTE_V4_SIGNED_SIZE})"
        )
    try:
        header = QuoteHeader.unpack(quote)
        body = TdQuoteBody.unpack(quote, BODY_OFFSET)
    except LayoutError as exc:
        raise BindingError(f"TD quote: {exc}") from exc
    if header.version != QUOTE_VERSION_4 or header.tee_type != TEE_TYPE_TDX:
        raise BindingError(
            f"TD quote header: version {header.version} (want 4), "
            f"tee_type 0x{header.tee_type:x} (want 0x81)"
        )
    return QuoteV4(
        header.version,
        header.att_key_type,
        header.tee_type,
        header.qe_vendor_id,
        header.user_data,
        body.mrtd,
        body.rtmrs,
        body.reportdata,
    )


def check_binding(quote: bytes, ca_public_point: bytes) -> None:
    """Raise BindingError unless the quote's REPORTDATA is the one for this CA public key."""
    expected = report_data_for(ca_public_point)
    got = parse_quote_v4(quote).report_data
    if got != expected:
        raise BindingError(
            f"TD quote REPORTDATA (offset {REPORTDATA_OFFSET}) is {got[:8].hex()}..., "
            f"expected SHA-384 of the CA public key {expected[:8].hex()}..."
        )


def is_fake_quote(quote: bytes) -> bool:
    """True for quotes made by FakeAttester (its marker in the QE vendor ID or user data)."""
    if len(quote) < QuoteHeader.SIZE:
        return False
    header = QuoteHeader.STRUCT.unpack_from(quote)  # reserved bytes are not the question here
    vendor, user = header[-2], header[-1]
    return bool(vendor == FAKE_QE_VENDOR_ID or user == FAKE_USER_DATA)


def cc_event_log_header() -> bytes:
    """The TCG_PCR_EVENT header that opens a CC event log: Spec ID Event03, SHA-384 only."""
    spec = (
        SpecIdEvent(
            SPEC_ID_SIGNATURE, 0, 0, SPEC_VERSION_MAJOR, 0, UINTN_SIZE_64BIT, ONE_DIGEST
        ).pack()
        + SpecIdAlgorithm(TPM_ALG_SHA384, SHA384_SIZE).pack()
        + VendorInfoSize(0).pack()
    )
    return TcgPcrEvent(0, EV_NO_ACTION, bytes(SHA1_SIZE), len(spec)).pack() + spec


def cc_event(rtmr: int, event_type: int, digest: bytes, data: bytes) -> bytes:
    """One TCG_PCR_EVENT2 with a single SHA-384 digest, logged at MR index RTMR + 1."""
    return (
        TcgPcrEvent2Head(rtmr + MR_INDEX_OF_RTMR0, event_type, ONE_DIGEST, TPM_ALG_SHA384).pack()
        + digest
        + EventSize(len(data)).pack()
        + data
    )


def cc_separator_event(rtmr: int) -> bytes:
    """The SEPARATOR event (four zero bytes) for one RTMR."""
    return cc_event(rtmr, EV_SEPARATOR, hashlib.sha384(SEPARATOR_EVENT).digest(), SEPARATOR_EVENT)


def cc_event_log_separators() -> bytes:
    """A SHA-384 CC event log holding one separator per RTMR."""
    return cc_event_log_header() + b"".join(cc_separator_event(r) for r in range(RTMR_COUNT))


def _separator_rtmr() -> bytes:
    """An RTMR after one separator extend from zero: SHA-384(0^48 || SHA-384(00000000))."""
    return hashlib.sha384(bytes(SHA384_SIZE) + hashlib.sha384(SEPARATOR_EVENT).digest()).digest()


class FakeAttester:
    """Test attester: a structurally valid, signed, clearly fake TDX quote v4. Never production."""

    name = "fake"
    simulated = True

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttesterError(
                f"REPORTDATA must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}"
            )
        header = QuoteHeader(
            QUOTE_VERSION_4,
            ATT_KEY_TYPE_ECDSA_P256,
            TEE_TYPE_TDX,
            0,
            0,
            FAKE_QE_VENDOR_ID,
            FAKE_USER_DATA,
        ).pack()
        rtmr = _separator_rtmr()
        zero48 = bytes(SHA384_SIZE)
        body = TdQuoteBody(
            bytes(16),
            zero48,
            zero48,
            0,
            0,
            0,
            hashlib.sha384(b"FAKE MRTD").digest(),
            zero48,
            zero48,
            zero48,
            rtmr,
            rtmr,
            rtmr,
            rtmr,
            report_data,
        ).pack()
        # Imported here, not at the top: L1 imports this module but never makes a fake quote, and
        # starts faster without the cryptography package.
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        attestation_key = ec.generate_private_key(ec.SECP256R1())
        r, s = decode_dss_signature(attestation_key.sign(header + body, ec.ECDSA(hashes.SHA256())))
        numbers = attestation_key.public_key().public_numbers()
        att_pub = numbers.x.to_bytes(ECDSA_P256_COORDINATE_SIZE, "big") + numbers.y.to_bytes(
            ECDSA_P256_COORDINATE_SIZE, "big"
        )
        qe_auth = b""
        qe_report = bytearray(SgxReportBody.SIZE)
        bound = hashlib.sha256(att_pub + qe_auth).digest()
        start = SgxReportBody.offset("report_data")
        qe_report[start : start + len(bound)] = bound
        pck = (
            CertificationDataHeader(
                CertificationDataType.PCK_CERT_CHAIN, len(FAKE_PCK_CHAIN)
            ).pack()
            + FAKE_PCK_CHAIN
        )
        qe_cert_data = (
            bytes(qe_report)
            + bytes(ECDSA_P256_SIGNATURE_SIZE)
            + QeAuthDataSize(len(qe_auth)).pack()
            + qe_auth
            + pck
        )
        signature_data = (
            r.to_bytes(ECDSA_P256_COORDINATE_SIZE, "big")
            + s.to_bytes(ECDSA_P256_COORDINATE_SIZE, "big")
            + att_pub
            + CertificationDataHeader(CertificationDataType.QE_REPORT, len(qe_cert_data)).pack()
            + qe_cert_data
        )
        return header + body + SignatureDataLength(len(signature_data)).pack() + signature_data

    def event_log(self) -> bytes:
        return cc_event_log_separators()


# Linux configfs-tsm (Documentation/ABI/testing/configfs-tsm) and the CCEL ACPI table's log area.
TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
CCEL_LOG_PATH = Path("/sys/firmware/acpi/tables/data/CCEL")
TSM_PROVIDER_TDX = "tdx_guest"


class TsmAttester:
    """Real TDX quotes through a TD guest kernel's configfs-tsm (for `vtpm serve` inside a TD).

    Untested on hardware here (no TDX); only its failure path is tested. Any failure is an error."""

    name = "tsm"
    simulated = False

    def __init__(self, root: Path = TSM_REPORT_ROOT, log_path: Path = CCEL_LOG_PATH) -> None:
        self.root = root
        self.log_path = log_path

    def quote(self, report_data: bytes) -> bytes:
        if len(report_data) != REPORT_DATA_SIZE:
            raise AttesterError(
                f"REPORTDATA must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}"
            )
        if not self.root.is_dir():
            raise AttesterError(f"configfs-tsm not available at {self.root} (not in a TD?)")
        entry = self.root / f"vtpm-{uuid.uuid4().hex}"
        try:
            entry.mkdir()
            provider = (entry / "provider").read_text().strip()
            if provider != TSM_PROVIDER_TDX:
                raise AttesterError(f"{entry}/provider is {provider!r}, not {TSM_PROVIDER_TDX!r}")
            (entry / "inblob").write_bytes(report_data)
            quote = (entry / "outblob").read_bytes()
            generation = int((entry / "generation").read_text())
        except OSError as exc:
            raise AttesterError(f"configfs-tsm report at {entry}: {exc}") from exc
        finally:
            if entry.exists():
                os.rmdir(entry)
        if generation != 1:
            raise AttesterError(f"{entry}: generation {generation}, another writer raced us")
        if not quote:
            raise AttesterError(f"{entry}/outblob is empty")
        return quote

    def event_log(self) -> bytes:
        try:
            return self.log_path.read_bytes()
        except OSError as exc:
            raise AttesterError(f"CC event log {self.log_path}: {exc}") from exc


ATTESTERS: dict[str, type[FakeAttester] | type[TsmAttester]] = {
    "fake": FakeAttester,
    "tsm": TsmAttester,
}


def attester_from_name(name: str) -> Attester:
    """The attester registered under `name`; an error naming the known ones otherwise."""
    factory = ATTESTERS.get(name)
    if factory is None:
        raise UnknownAttesterError(
            f"unknown attester {name!r}; known: {', '.join(sorted(ATTESTERS))} (the L1 paravisor "
            "passes its own TDX attester object)"
        )
    return factory()
