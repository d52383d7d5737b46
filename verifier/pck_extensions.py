"""The SGX extensions of a PCK certificate: FMSPC, PCE ID, PPID and the platform's TCB SVNs.

Intel SGX PCK Certificate and Certificate Revocation List Profile Specification, section "SGX
Extensions" (OID 1.2.840.113741.1.13.1): a DER SEQUENCE of (OID, value) pairs; the TCB entry is
itself a SEQUENCE holding 16 SGX TCB component SVNs (INTEGER), PCESVN (INTEGER) and CPUSVN (OCTET
STRING). `cryptography` keeps the extension as opaque bytes, so a small DER walker reads it here.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from verifier.errors import VerificationError

OID_SGX_EXTENSIONS = "1.2.840.113741.1.13.1"
OID_PPID = OID_SGX_EXTENSIONS + ".1"
OID_TCB = OID_SGX_EXTENSIONS + ".2"
OID_PCESVN = OID_TCB + ".17"
OID_CPUSVN = OID_TCB + ".18"
OID_PCE_ID = OID_SGX_EXTENSIONS + ".3"
OID_FMSPC = OID_SGX_EXTENSIONS + ".4"
OID_SGX_TYPE = OID_SGX_EXTENSIONS + ".5"
SGX_TCB_COMPONENTS = 16
FMSPC_SIZE = 6
PCE_ID_SIZE = 2

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30
LONG_LENGTH = 0x80
OID_CONTINUATION = 0x80
OID_FIRST_ARC_SPLIT = 40


class PckExtensionError(VerificationError, ValueError):
    """The PCK certificate's SGX extensions are missing or do not decode; names the item."""


@dataclass(frozen=True)
class DerItem:
    """One DER TLV: its tag, contents and where it started in the extension value."""

    tag: int
    value: bytes
    offset: int


def der_items(data: bytes, base: int = 0) -> list[DerItem]:
    """The TLVs that fill `data` exactly (one nesting level); single-byte tags only."""
    items: list[DerItem] = []
    pos = 0
    while pos < len(data):
        start = pos
        if pos + 2 > len(data):
            raise PckExtensionError(f"DER item at offset {base + start} is truncated")
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if first & LONG_LENGTH:
            count = first & ~LONG_LENGTH
            if count == 0 or count > 4 or pos + count > len(data):
                raise PckExtensionError(f"DER length at offset {base + start + 1} is malformed")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
        else:
            length = first
        if pos + length > len(data):
            raise PckExtensionError(
                f"DER item at offset {base + start} claims {length} bytes, "
                f"{len(data) - pos} are left"
            )
        items.append(DerItem(tag, data[pos : pos + length], base + pos))
        pos += length
    return items


def decode_oid(value: bytes) -> str:
    """Dotted form of a DER OBJECT IDENTIFIER's contents."""
    arcs: list[int] = []
    current = 0
    for byte in value:
        current = (current << 7) | (byte & ~OID_CONTINUATION & 0xFF)
        if not byte & OID_CONTINUATION:
            arcs.append(current)
            current = 0
    if not arcs or current:
        raise PckExtensionError(f"OBJECT IDENTIFIER {value.hex()} is malformed")
    first = min(arcs[0] // OID_FIRST_ARC_SPLIT, 2)
    return ".".join(str(a) for a in [first, arcs[0] - first * OID_FIRST_ARC_SPLIT, *arcs[1:]])


def _pairs(value: bytes, base: int, where: str) -> dict[str, DerItem]:
    pairs: dict[str, DerItem] = {}
    for item in der_items(value, base):
        if item.tag != TAG_SEQUENCE:
            raise PckExtensionError(f"{where}: item at offset {item.offset} is not a SEQUENCE")
        inner = der_items(item.value, item.offset)
        if len(inner) != 2 or inner[0].tag != TAG_OID:
            raise PckExtensionError(f"{where}: entry at offset {item.offset} is not (OID, value)")
        pairs[decode_oid(inner[0].value)] = inner[1]
    return pairs


def _need(pairs: dict[str, DerItem], oid: str, tag: int, name: str) -> DerItem:
    item = pairs.get(oid)
    if item is None:
        raise PckExtensionError(f"PCK certificate SGX extensions lack {name} ({oid})")
    if item.tag != tag:
        raise PckExtensionError(f"{name} ({oid}) has DER tag {item.tag:#x}, expected {tag:#x}")
    return item


def _integer(item: DerItem, name: str) -> int:
    if not item.value or item.value[0] & LONG_LENGTH:
        raise PckExtensionError(f"{name} at offset {item.offset} is not a non-negative INTEGER")
    return int.from_bytes(item.value, "big")


@dataclass(frozen=True)
class PckExtensions:
    """What TCB matching reads from a PCK certificate."""

    fmspc: bytes
    pce_id: bytes
    ppid: bytes
    cpusvn: bytes
    pcesvn: int
    sgx_tcb_components: tuple[int, ...]

    @classmethod
    def from_der(cls, value: bytes) -> PckExtensions:
        """Decode the SGX extension's value (the DER SEQUENCE)."""
        outer = der_items(value)
        if len(outer) != 1 or outer[0].tag != TAG_SEQUENCE:
            raise PckExtensionError("SGX extensions value is not one DER SEQUENCE")
        pairs = _pairs(outer[0].value, outer[0].offset, "SGX extensions")
        tcb_item = _need(pairs, OID_TCB, TAG_SEQUENCE, "TCB")
        tcb = _pairs(tcb_item.value, tcb_item.offset, "SGX extensions TCB")
        components = tuple(
            _integer(
                _need(tcb, f"{OID_TCB}.{i}", TAG_INTEGER, f"SGX TCB component {i}"),
                f"SGX TCB component {i}",
            )
            for i in range(1, SGX_TCB_COMPONENTS + 1)
        )
        fmspc = _need(pairs, OID_FMSPC, TAG_OCTET_STRING, "FMSPC").value
        pce_id = _need(pairs, OID_PCE_ID, TAG_OCTET_STRING, "PCE ID").value
        if len(fmspc) != FMSPC_SIZE or len(pce_id) != PCE_ID_SIZE:
            raise PckExtensionError(
                f"FMSPC is {len(fmspc)} bytes (expected {FMSPC_SIZE}), PCE ID {len(pce_id)} "
                f"(expected {PCE_ID_SIZE})"
            )
        return cls(
            fmspc=fmspc,
            pce_id=pce_id,
            ppid=_need(pairs, OID_PPID, TAG_OCTET_STRING, "PPID").value,
            cpusvn=_need(tcb, OID_CPUSVN, TAG_OCTET_STRING, "CPUSVN").value,
            pcesvn=_integer(_need(tcb, OID_PCESVN, TAG_INTEGER, "PCESVN"), "PCESVN"),
            sgx_tcb_components=components,
        )

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> PckExtensions:
        """The SGX extensions of a PCK leaf certificate."""
        try:
            ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(OID_SGX_EXTENSIONS))
        except x509.ExtensionNotFound as exc:
            raise PckExtensionError(
                f"PCK certificate '{cert.subject.rfc4514_string()}' has no SGX extensions "
                f"({OID_SGX_EXTENSIONS})"
            ) from exc
        assert isinstance(ext.value, x509.UnrecognizedExtension)
        return cls.from_der(ext.value.value)
