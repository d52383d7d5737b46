"""`vtpm info`: what a TPM reachable through a TCTI says about itself, read with tpm2-pytss (ESAPI).

A host-side client tool: it recreates the EKs from tpm2-pytss's own TCG templates (not ours, so it
cross-checks manufacture), reads the EK and CA certificates from NV and checks that they chain and
that the CA's TD quote carries the REPORTDATA of the CA key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from vtpm import attest, certs, wire
from vtpm.errors import VtpmError
from vtpm.nvindex import NV_ECC_EK_CERT, NV_EK_CHAIN_FIRST, NV_EK_CHAIN_LAST, NV_RSA_EK_CERT

# tpm2-pytss EK template names (tpm2_pytss.utils.create_ek_template) for each of our EK kinds.
PYTSS_EK_TEMPLATES = {"rsa": ("EK-RSA2048", NV_RSA_EK_CERT), "ecc": ("EK-ECC256", NV_ECC_EK_CERT)}
MAX_PROPERTIES = 64
NV_INDEX_FIRST = 0x01000000  # TPM_HT_NV_INDEX << 24
MAX_HANDLES = 1024


class InfoError(VtpmError, RuntimeError):
    """The TPM could not be queried; says which step."""


@dataclass
class TpmDescription:
    """What `describe` found, for callers that want fields rather than text."""

    manufacturer: str = ""
    model: str = ""
    firmware: str = ""
    pcr_banks: dict[str, int] = field(default_factory=dict)
    ek_names: dict[str, str] = field(default_factory=dict)
    ek_certificates: dict[str, bytes] = field(default_factory=dict)
    ca_certificate: bytes = b""
    lines: list[str] = field(default_factory=list)


def _ascii_word(value: int) -> str:
    return value.to_bytes(4, "big").rstrip(b"\0").decode("ascii", "replace")


def inspect(tcti: str) -> TpmDescription:
    """Query the TPM at `tcti` (e.g. "swtpm:host=127.0.0.1,port=2321")."""
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR, TPM2_CAP, TPM2_PT
    from tpm2_pytss.TSS2_Exception import TSS2_Exception
    from tpm2_pytss.utils import NoSuchIndex, create_ek_template

    out = TpmDescription()
    try:
        ectx = ESAPI(tcti)
    except TSS2_Exception as exc:
        raise InfoError(f"cannot open TCTI {tcti!r}: {exc}") from exc
    try:
        _more, data = ectx.get_capability(TPM2_CAP.TPM_PROPERTIES, TPM2_PT.FIXED, MAX_PROPERTIES)
        props = {int(p.property): int(p.value) for p in data.data.tpmProperties}
        identity = certs.TpmIdentity.from_properties(props)
        out.manufacturer = identity.manufacturer
        out.model = identity.model
        out.firmware = identity.version
        maker = _ascii_word(props[wire.TPM_PT_MANUFACTURER])
        out.lines.append(
            f"TPM: manufacturer {maker} ({identity.manufacturer}), model {identity.model!r}, "
            f"firmware {identity.version}"
        )
        _more, data = ectx.get_capability(TPM2_CAP.PCRS, 0, 1)
        for sel in data.data.assignedPCR:
            selected = bytes(sel.pcrSelect)[: sel.sizeofSelect]
            count = sum(bin(b).count("1") for b in selected)
            if count:
                bank = wire.HASH_ALGS.get(int(sel.hash), f"alg 0x{int(sel.hash):04x}")
                out.pcr_banks[bank] = count
        banks = ", ".join(f"{k} ({v} PCRs)" for k, v in out.pcr_banks.items())
        out.lines.append(f"PCR banks: {banks or 'none allocated'}")

        _more, data = ectx.get_capability(TPM2_CAP.HANDLES, NV_INDEX_FIRST, MAX_HANDLES)
        defined = {int(h) for h in data.data.handles}

        def nv_read(index: int) -> bytes:
            if index not in defined:
                raise NoSuchIndex(index)
            handle = ectx.tr_from_tpmpublic(index)
            try:
                size = int(ectx.nv_read_public(handle)[0].nvPublic.dataSize)
                chunk_max = props.get(wire.TPM_PT_NV_BUFFER_MAX, 512)
                blob = b""
                while len(blob) < size:
                    n = min(chunk_max, size - len(blob))
                    blob += bytes(ectx.nv_read(handle, n, len(blob)))
                return blob
            finally:
                ectx.tr_close(handle)

        ca_der = b""
        for index in range(NV_EK_CHAIN_FIRST, NV_EK_CHAIN_LAST + 1):
            try:
                ca_der += nv_read(index)
            except NoSuchIndex:
                break
        out.ca_certificate = ca_der
        ca_cert = _describe_ca(ca_der, NV_EK_CHAIN_FIRST, out.lines)

        for kind, (template_name, nv_index) in PYTSS_EK_TEMPLATES.items():
            cert_der, template = create_ek_template(template_name, nv_read)
            handle, public, _cd, _ch, _ct = ectx.create_primary(None, template, ESYS_TR.ENDORSEMENT)
            ectx.flush_context(handle)
            name = wire.Public.from_bytes(public.publicArea.marshal()).name()
            out.ek_names[kind] = name.hex()
            out.lines.append(f"EK {kind} ({template_name}): name {name.hex()}")
            if cert_der is None:
                out.lines.append(f"  certificate: none at NV 0x{nv_index:08X}")
                continue
            out.ek_certificates[kind] = cert_der
            _describe_ek_cert(cert_der, nv_index, public.publicArea.marshal(), ca_cert, out.lines)
    except TSS2_Exception as exc:
        raise InfoError(f"TPM at {tcti!r} refused a query: {exc}") from exc
    finally:
        ectx.close()
    return out


def _describe_ca(ca_der: bytes, first: int, lines: list[str]) -> x509.Certificate | None:
    if not ca_der:
        lines.append(f"CA certificate: none at NV 0x{first:08X}")
        return None
    try:
        ca = x509.load_der_x509_certificate(ca_der)
    except ValueError as exc:
        lines.append(f"CA certificate at NV 0x{first:08X}: unparsable ({exc})")
        return None
    lines.append(
        f"CA certificate (NV 0x{first:08X}, {len(ca_der)} bytes): subject "
        f"{ca.subject.rfc4514_string()!r}, issuer {ca.issuer.rfc4514_string()!r}"
    )
    try:
        quote = ca.extensions.get_extension_for_oid(certs.OID_TD_QUOTE).value
        assert isinstance(quote, x509.UnrecognizedExtension)
        key = ca.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        attest.check_binding(quote.value, certs.sec1_point(key))
        kind = "FAKE" if attest.is_fake_quote(quote.value) else "TDX"
        lines.append(f"  TD quote: {len(quote.value)} bytes, {kind}, REPORTDATA binds the CA key")
    except (x509.ExtensionNotFound, attest.BindingError, AssertionError) as exc:
        lines.append(f"  TD quote: NOT BOUND ({exc or type(exc).__name__})")
    return ca


def _describe_ek_cert(
    cert_der: bytes,
    nv_index: int,
    public_area: bytes,
    ca: x509.Certificate | None,
    lines: list[str],
) -> None:
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        lines.append(f"  certificate at NV 0x{nv_index:08X}: unparsable ({exc})")
        return
    ek_key = certs.public_key_of(wire.Public.from_bytes(public_area))
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    matches = cert.public_key().public_bytes(*spki) == ek_key.public_bytes(*spki)
    chained = "no CA"
    if ca is not None:
        try:
            cert.verify_directly_issued_by(ca)
            chained = "verifies against the CA"
        except Exception as exc:  # InvalidSignature, ValueError, TypeError
            chained = f"DOES NOT verify against the CA ({type(exc).__name__})"
    lines.append(
        f"  certificate NV 0x{nv_index:08X} ({len(cert_der)} bytes): subject "
        f"{cert.subject.rfc4514_string()!r}, issuer {cert.issuer.rfc4514_string()!r}, "
        f"key {'matches' if matches else 'DOES NOT match'} the EK, {chained}"
    )


def describe(tcti: str) -> str:
    """Human-readable summary: TPM identity, PCR banks, EK names, certificate subjects/issuers."""
    return "\n".join(inspect(tcti).lines)
