"""TCB status of a TD quote's platform and quoting enclave, judged from verified collateral.

Intel SGX and TDX DCAP specifications, "TCB Info V3" and "Enclave Identity V2": the first TCB
level (in the order the TCB info lists them, highest first) whose PCESVN, 16 SGX TCB component
SVNs (from the PCK certificate) and 16 TDX TCB component SVNs (TEE_TCB_SVN of the quote) are all
at or below the platform's gives the platform status; for a TDX module of major version > 0 the
matching `tdxModuleIdentities` entry (id TDX_<version>) checks MRSIGNERSEAM and SEAMATTRIBUTES and
adds its own level's status. The QE identity checks the QE report's MRSIGNER, ISVPRODID,
MISCSELECT and ATTRIBUTES under their masks and gives the QE status by ISVSVN. The verdict is the
worse of the statuses, with the advisory IDs of both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tdxdefs.quote import SgxReportBody, TdQuoteBody, TdQuoteBody15
from verifier.collateral import CollateralError, CollateralFormatError, SignedJson
from verifier.pck_extensions import SGX_TCB_COMPONENTS, PckExtensions

TDX_TCB_COMPONENTS = 16
TEE_TCB_SVN_MODULE_SVN = 0  # TEE_TCB_SVN byte 0: the TDX module's SVN
TEE_TCB_SVN_MODULE_VERSION = 1  # byte 1: its major version
SGX_ATTRIBUTE_DEBUG = 0x02  # SGX ATTRIBUTES byte 0, bit 1: DEBUG
SEAM_ATTRIBUTES_SIZE = 8


class TcbStatus(StrEnum):
    """TCB level status as TCB info and QE identity name it."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"

    @property
    def severity(self) -> int:
        return _SEVERITY.index(self)


_SEVERITY = list(TcbStatus)


class QeIdentityMismatchError(CollateralError):
    """The QE report is not of the quoting enclave the QE identity describes."""


class TcbMatchError(CollateralError):
    """The platform matches no TCB level of the TCB info, or is not the platform it describes."""


@dataclass(frozen=True)
class TcbVerdict:
    """A status with its advisory IDs; `parts` says where it came from."""

    status: TcbStatus
    advisory_ids: tuple[str, ...] = ()
    parts: tuple[tuple[str, TcbStatus], ...] = field(default=())

    def merge(self, other: TcbVerdict) -> TcbVerdict:
        worse = other.status if other.status.severity > self.status.severity else self.status
        ids = self.advisory_ids + tuple(a for a in other.advisory_ids if a not in self.advisory_ids)
        return TcbVerdict(worse, ids, self.parts + other.parts)


def _status(level: dict[str, Any], where: str, part: str) -> TcbVerdict:
    try:
        status = TcbStatus(level["tcbStatus"])
    except (KeyError, ValueError) as exc:
        raise CollateralFormatError(f"{where} has no known tcbStatus: {exc}") from exc
    ids = level.get("advisoryIDs") or []
    if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
        raise CollateralFormatError(f"{where} advisoryIDs is not a list of strings")
    return TcbVerdict(status, tuple(ids), ((part, status),))


def _svn(tcb: dict[str, Any], key: str, where: str) -> int:
    value = tcb.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CollateralFormatError(f"{where} {key} is not a non-negative integer: {value!r}")
    return value


def _svns(components: object, count: int, where: str) -> list[int]:
    if not isinstance(components, list) or len(components) != count:
        raise CollateralFormatError(f"{where} is not a list of {count} components")
    if not all(isinstance(c, dict) for c in components):
        raise CollateralFormatError(f"{where} has a component that is not an object")
    return [_svn(c, "svn", where) for c in components]


def _levels(levels: object, where: str) -> Iterable[tuple[int, dict[str, Any]]]:
    if not isinstance(levels, list) or not levels:
        raise CollateralFormatError(f"{where} has no tcbLevels")
    for index, level in enumerate(levels):
        if not isinstance(level, dict) or not isinstance(level.get("tcb"), dict):
            raise CollateralFormatError(f"{where} tcbLevels[{index}] has no tcb")
        yield index, level


def _masked_equal(actual: bytes, expected: bytes, mask: bytes) -> bool:
    return len(expected) == len(mask) == len(actual) and all(
        a & m == e & m for a, e, m in zip(actual, expected, mask, strict=True)
    )


def _hex_field(body: dict[str, Any], key: str, where: str, size: int) -> bytes:
    try:
        value = bytes.fromhex(body[key])
    except (KeyError, TypeError, ValueError) as exc:
        raise CollateralFormatError(f"{where} '{key}' is not hex") from exc
    if len(value) != size:
        raise CollateralFormatError(f"{where} '{key}' is {len(value)} bytes, expected {size}")
    return value


def qe_identity_status(qe: SgxReportBody, identity: SignedJson) -> TcbVerdict:
    """Match the QE report against the QE identity; the QE's TCB status by its ISVSVN."""
    body, where = identity.body, identity.name
    mrsigner = _hex_field(body, "mrsigner", where, 32)
    if qe.mr_signer != mrsigner:
        raise QeIdentityMismatchError(
            f"QE report MRSIGNER {qe.mr_signer.hex()} is not the QE identity's {mrsigner.hex()}"
        )
    if qe.isv_prod_id != identity.field("isvprodid"):
        raise QeIdentityMismatchError(
            f"QE report ISVPRODID {qe.isv_prod_id} is not the QE identity's "
            f"{identity.field('isvprodid')}"
        )
    misc = int.from_bytes(_hex_field(body, "miscselect", where, 4), "little")
    misc_mask = int.from_bytes(_hex_field(body, "miscselectMask", where, 4), "little")
    if qe.misc_select & misc_mask != misc & misc_mask:
        raise QeIdentityMismatchError(
            f"QE report MISCSELECT {qe.misc_select:#010x} does not match {misc:#010x} under "
            f"mask {misc_mask:#010x}"
        )
    attributes = _hex_field(body, "attributes", where, 16)
    attributes_mask = _hex_field(body, "attributesMask", where, 16)
    if not _masked_equal(qe.attributes, attributes, attributes_mask):
        raise QeIdentityMismatchError(
            f"QE report ATTRIBUTES {qe.attributes.hex()} do not match {attributes.hex()} under "
            f"mask {attributes_mask.hex()}"
        )
    if qe.attributes[0] & SGX_ATTRIBUTE_DEBUG:
        raise QeIdentityMismatchError("QE report ATTRIBUTES has DEBUG set: a debug quoting enclave")
    for index, level in _levels(identity.field("tcbLevels"), where):
        if qe.isv_svn >= _svn(level["tcb"], "isvsvn", f"{where} tcbLevels[{index}]"):
            return _status(level, f"{where} tcbLevels[{index}]", "quoting enclave")
    raise QeIdentityMismatchError(
        f"QE report ISVSVN {qe.isv_svn} is below every TCB level of the QE identity"
    )


def _module_status(
    body: TdQuoteBody, tee_tcb_svn: bytes, tcb_info: SignedJson
) -> TcbVerdict | None:
    info, where = tcb_info.body, tcb_info.name
    module = info.get("tdxModule")
    if not isinstance(module, dict):
        raise CollateralFormatError(f"{where} has no tdxModule")
    for key, size in (("mrsigner", 48), ("attributes", 8), ("attributesMask", 8)):
        _hex_field(module, key, f"{where} tdxModule", size)  # well formed even when overridden
    svn = tee_tcb_svn[TEE_TCB_SVN_MODULE_SVN]
    version = tee_tcb_svn[TEE_TCB_SVN_MODULE_VERSION]
    identity: dict[str, Any] = module
    identities = info.get("tdxModuleIdentities") or []
    if not isinstance(identities, list) or not all(isinstance(i, dict) for i in identities):
        raise CollateralFormatError(f"{where} tdxModuleIdentities is not a list of objects")
    name = "tdxModule"
    if version > 0 and identities:
        wanted = f"TDX_{version:02X}"
        found = [i for i in identities if str(i.get("id", "")).upper() == wanted]
        if not found:
            raise TcbMatchError(f"{where} has no TDX module identity {wanted}")
        identity, name = found[0], f"tdxModuleIdentities {wanted}"
    label = f"{where} {name}"
    mrsigner = _hex_field(identity, "mrsigner", label, 48)
    if body.mrsignerseam != mrsigner:
        raise TcbMatchError(
            f"quote MRSIGNERSEAM {body.mrsignerseam.hex()} is not {label} mrsigner {mrsigner.hex()}"
        )
    seam = body.seamattributes.to_bytes(SEAM_ATTRIBUTES_SIZE, "little")
    expected = _hex_field(identity, "attributes", label, SEAM_ATTRIBUTES_SIZE)
    mask = _hex_field(identity, "attributesMask", label, SEAM_ATTRIBUTES_SIZE)
    if not _masked_equal(seam, expected, mask) or any(
        s & ~m & 0xFF for s, m in zip(seam, mask, strict=True)
    ):
        raise TcbMatchError(
            f"quote SEAMATTRIBUTES {seam.hex()} do not match {label} {expected.hex()} under "
            f"mask {mask.hex()}"
        )
    if identity is module:
        return None
    for index, level in _levels(identity.get("tcbLevels"), label):
        if svn >= _svn(level["tcb"], "isvsvn", f"{label} tcbLevels[{index}]"):
            return _status(level, f"{label} tcbLevels[{index}]", "TDX module")
    raise TcbMatchError(f"TDX module SVN {svn} is below every TCB level of {label}")


def platform_status(body: TdQuoteBody, pck: PckExtensions, tcb_info: SignedJson) -> TcbVerdict:
    """Match the platform (PCK SGX TCB, PCESVN, the quote's TEE_TCB_SVN) to a TCB level; a TD
    report 1.5 body is matched again with TEE_TCB_SVN2 (the TDX module running now, after any
    TD-preserving update) and the worse status counts."""
    verdict = _platform_level(body, body.tee_tcb_svn, "TEE_TCB_SVN", pck, tcb_info)
    if isinstance(body, TdQuoteBody15):
        current = _platform_level(body, body.tee_tcb_svn2, "TEE_TCB_SVN2", pck, tcb_info)
        verdict = verdict.merge(current)
    return verdict


def _platform_level(
    body: TdQuoteBody, tee_tcb_svn: bytes, name: str, pck: PckExtensions, tcb_info: SignedJson
) -> TcbVerdict:
    info, where = tcb_info.body, tcb_info.name
    fmspc = _hex_field(info, "fmspc", where, 6)
    if fmspc != pck.fmspc:
        raise TcbMatchError(
            f"{where} is for FMSPC {fmspc.hex()}, the PCK certificate's is {pck.fmspc.hex()}"
        )
    pce_id = _hex_field(info, "pceId", where, 2)
    if pce_id != pck.pce_id:
        raise TcbMatchError(
            f"{where} is for PCE ID {pce_id.hex()}, the PCK certificate's is {pck.pce_id.hex()}"
        )
    tdx = list(tee_tcb_svn)
    for index, level in _levels(info.get("tcbLevels"), where):
        tcb, label = level["tcb"], f"{where} tcbLevels[{index}]"
        sgx = _svns(tcb.get("sgxtcbcomponents"), SGX_TCB_COMPONENTS, f"{label} sgxtcbcomponents")
        needed = _svns(tcb.get("tdxtcbcomponents"), TDX_TCB_COMPONENTS, f"{label} tdxtcbcomponents")
        if (
            pck.pcesvn >= _svn(tcb, "pcesvn", label)
            and all(have >= need for have, need in zip(pck.sgx_tcb_components, sgx, strict=True))
            and all(have >= need for have, need in zip(tdx, needed, strict=True))
        ):
            verdict = _status(level, label, "platform")
            module = _module_status(body, tee_tcb_svn, tcb_info)
            return verdict if module is None else verdict.merge(module)
    raise TcbMatchError(
        f"no TCB level of {where} matches the platform: PCESVN {pck.pcesvn}, SGX TCB "
        f"{list(pck.sgx_tcb_components)}, {name} {tee_tcb_svn.hex()}"
    )
