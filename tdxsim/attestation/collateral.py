"""SIMULATED collateral for a simulated platform's quotes: TCB info, QE identity and CRLs, signed
under the platform's simulated PCK root, in the JSON a verifier reads for real platforms.

Intel SGX and TDX DCAP specifications, "TCB Info V3" (id "TDX"), "Enclave Identity V2" (id
"TD_QE"), "PCK Certificate and CRL Profile". A simulated TCB signing certificate (issued by the
simulated root) signs TCB info and QE identity; the root issues the root CA CRL and the simulated
platform CA the PCK CRL. `platform_status` picks the status of the TCB level the platform matches
(e.g. OutOfDate, with a SIMULATED advisory ID), so a verifier's failure path can be shown; every
identifier and advisory says SIMULATED, nothing claims to be Intel's.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from tdxdefs.quote import ECDSA_P256_COORDINATE_SIZE
from tdxsim.attestation.pck import (
    NOT_BEFORE,
    ROOT_CN,
    PckChain,
    certificate_serial,
    issue_certificate,
    new_p256_key,
)
from tdxsim.attestation.quoting import (
    SIM_QE_ISV_PROD_ID,
    SIM_QE_ISV_SVN,
    SIM_QE_MRSIGNER,
)
from tdxsim.attestation.report import SIMULATED_MRSIGNERSEAM, SIMULATED_TEE_TCB_SVN
from verifier.tcb import TcbStatus

TCB_SIGNING_CN = "tdxsim SIMULATED TCB Signing"
SIMULATED_ADVISORY = "SIMULATED-SA-00001"
TCB_EVALUATION_DATA_NUMBER = 1
VALIDITY = datetime.timedelta(days=30)
TCB_DATE = "2024-01-01T00:00:00Z"
QE_ATTRIBUTES_MASK = "FBFFFFFFFFFFFFFF0000000000000000"
SEAM_ATTRIBUTES = "0000000000000000"
SEAM_ATTRIBUTES_MASK = "FFFFFFFFFFFFFFFF"
TEE_TCB_SVN_MODULE_SVN = 0
TEE_TCB_SVN_MODULE_VERSION = 1


def _iso(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sign_raw_hex(key: ec.EllipticCurvePrivateKey, data: bytes) -> str:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    size = ECDSA_P256_COORDINATE_SIZE
    return (r.to_bytes(size, "big") + s.to_bytes(size, "big")).hex()


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(Encoding.PEM).decode() for c in certs)


def _components(svns: bytes | tuple[int, ...]) -> list[dict[str, int]]:
    return [{"svn": int(svn)} for svn in svns]


@dataclass
class SimulatedCollateral:
    """Issues collateral for one simulated platform (its PCK chain and TDX module TCB).

    `platform_status`: the status of the TCB level the platform matches (UpToDate by default;
    any other status makes an UpToDate level above the platform's that it does not reach).
    `revoked_pck`: list the PCK leaf in the PCK CRL. Times default to now .. now + 30 days.
    """

    pck: PckChain
    tee_tcb_svn: bytes = SIMULATED_TEE_TCB_SVN
    platform_status: TcbStatus = TcbStatus.UP_TO_DATE
    revoked_pck: bool = False
    issue_date: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    )
    validity: datetime.timedelta = VALIDITY

    def __post_init__(self) -> None:
        self.platform_status = TcbStatus(self.platform_status)
        self.signing_key = new_p256_key(self.pck.seed, "tdxsim tcb signing")
        self.signing_cert = issue_certificate(
            TCB_SIGNING_CN,
            ROOT_CN,
            self.signing_key.public_key(),
            self.pck.root_key,
            certificate_serial(self.pck.seed, "tcb signing"),
            ca_path_length=None,
            is_ca=False,
            deterministic=self.pck.seed is not None,
        )

    @property
    def next_update(self) -> datetime.datetime:
        return self.issue_date + self.validity

    def _level(
        self, sgx: tuple[int, ...], pcesvn: int, tdx: bytes, status: TcbStatus
    ) -> dict[str, Any]:
        level: dict[str, Any] = {
            "tcb": {
                "sgxtcbcomponents": _components(sgx),
                "pcesvn": pcesvn,
                "tdxtcbcomponents": _components(tdx),
            },
            "tcbDate": TCB_DATE,
            "tcbStatus": status.value,
        }
        if status is not TcbStatus.UP_TO_DATE:
            level["advisoryIDs"] = [SIMULATED_ADVISORY]
        return level

    def tcb_info(self) -> dict[str, Any]:
        """The TCB info body (TDX, version 3) for this platform."""
        tcb = self.pck.tcb
        levels = [
            self._level(tcb.sgx_components, tcb.pcesvn, self.tee_tcb_svn, self.platform_status)
        ]
        if self.platform_status is not TcbStatus.UP_TO_DATE:
            newer = bytearray(self.tee_tcb_svn)
            newer[2] += 1  # a TDX TCB component the platform has not reached
            levels.insert(
                0, self._level(tcb.sgx_components, tcb.pcesvn, bytes(newer), TcbStatus.UP_TO_DATE)
            )
        module = {
            "mrsigner": SIMULATED_MRSIGNERSEAM.hex().upper(),
            "attributes": SEAM_ATTRIBUTES,
            "attributesMask": SEAM_ATTRIBUTES_MASK,
        }
        version = self.tee_tcb_svn[TEE_TCB_SVN_MODULE_VERSION]
        identity = {
            "id": f"TDX_{version:02X}",
            **module,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": self.tee_tcb_svn[TEE_TCB_SVN_MODULE_SVN]},
                    "tcbDate": TCB_DATE,
                    "tcbStatus": TcbStatus.UP_TO_DATE.value,
                }
            ],
        }
        return {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(self.issue_date),
            "nextUpdate": _iso(self.next_update),
            "fmspc": tcb.fmspc.hex().upper(),
            "pceId": tcb.pce_id.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
            "tdxModule": module,
            "tdxModuleIdentities": [identity],
            "tcbLevels": levels,
        }

    def qe_identity(self) -> dict[str, Any]:
        """The QE identity body (TD_QE, version 2) of the simulated quoting enclave."""
        return {
            "id": "TD_QE",
            "version": 2,
            "issueDate": _iso(self.issue_date),
            "nextUpdate": _iso(self.next_update),
            "tcbEvaluationDataNumber": TCB_EVALUATION_DATA_NUMBER,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "00" * 16,
            "attributesMask": QE_ATTRIBUTES_MASK,
            "mrsigner": SIM_QE_MRSIGNER.hex().upper(),
            "isvprodid": SIM_QE_ISV_PROD_ID,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": SIM_QE_ISV_SVN},
                    "tcbDate": TCB_DATE,
                    "tcbStatus": TcbStatus.UP_TO_DATE.value,
                }
            ],
        }

    def _crl(
        self, issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: list[int]
    ) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer.subject)
            .last_update(self.issue_date)
            .next_update(self.next_update)
            .add_extension(x509.CRLNumber(TCB_EVALUATION_DATA_NUMBER), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                critical=False,
            )
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(max(self.issue_date - datetime.timedelta(days=1), NOT_BEFORE))
                .build()
            )
        crl = builder.sign(key, hashes.SHA256(), ecdsa_deterministic=self.pck.seed is not None)
        return crl.public_bytes(Encoding.DER)

    def bundle(self) -> dict[str, str]:
        """The collateral JSON object (the keys the verifier's collateral file uses)."""
        tcb_info = json.dumps(self.tcb_info(), separators=(",", ":"))
        qe_identity = json.dumps(self.qe_identity(), separators=(",", ":"))
        pck_revoked = [self.pck.leaf.serial_number] if self.revoked_pck else []
        return {
            "pck_crl_issuer_chain": _pem(self.pck.intermediate, self.pck.root),
            "root_ca_crl": self._crl(self.pck.root, self.pck.root_key, []).hex(),
            "pck_crl": self._crl(
                self.pck.intermediate, self.pck.intermediate_key, pck_revoked
            ).hex(),
            "tcb_info_issuer_chain": _pem(self.signing_cert, self.pck.root),
            "tcb_info": tcb_info,
            "tcb_info_signature": _sign_raw_hex(self.signing_key, tcb_info.encode()),
            "qe_identity_issuer_chain": _pem(self.signing_cert, self.pck.root),
            "qe_identity": qe_identity,
            "qe_identity_signature": _sign_raw_hex(self.signing_key, qe_identity.encode()),
        }

    def to_json(self) -> str:
        return json.dumps(self.bundle(), indent=1)

    def write_pcs_directory(self, folder: Path) -> None:
        """The same collateral as a folder of PCS responses as served: the signed bodies
        wrapped with their signatures, the issuer chains as PEM, the CRLs as DER."""
        bundle = self.bundle()
        folder.mkdir(parents=True, exist_ok=True)
        for name, key, member in (
            ("tcb_info.json", "tcb_info", "tcbInfo"),
            ("qe_identity.json", "qe_identity", "enclaveIdentity"),
        ):
            signature = bundle[f"{key}_signature"]
            text = f'{{"{member}":{bundle[key]},"signature":"{signature}"}}'
            (folder / name).write_text(text)
        (folder / "tcb_info_issuer_chain.pem").write_text(bundle["tcb_info_issuer_chain"])
        (folder / "pck_crl.der").write_bytes(bytes.fromhex(bundle["pck_crl"]))
        (folder / "root_ca_crl.der").write_bytes(bytes.fromhex(bundle["root_ca_crl"]))
