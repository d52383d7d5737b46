"""The roots a TD quote's PCK chain may end at: Intel's SGX Root CA by default, the tdxsim
simulated root only when asked for by name, or a certificate file the caller names.

`roots/intel-sgx-root-ca.pem` is Intel's public SGX Root CA certificate (the one Intel publishes
for DCAP attestation; the copy here is the one the dcap-qvl wheel on PyPI embeds); its SHA-256
fingerprint over the DER is `INTEL_SGX_ROOT_CA_SHA256` and is checked on every load.
`roots/tdxsim-simulated-root.pem` is the root of tdxsim's well-known simulated platform: its
private key is derivable from a public seed, so a quote under it proves nothing about hardware.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from verifier.chain import TrustedRootFormatError, load_certificate

ROOTS_DIR = Path(__file__).resolve().parent / "roots"
INTEL_SGX_ROOT_CA_FILE = ROOTS_DIR / "intel-sgx-root-ca.pem"
SIMULATED_ROOT_FILE = ROOTS_DIR / "tdxsim-simulated-root.pem"
INTEL_SGX_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"
ROOT_INTEL = "intel"
ROOT_SIMULATED = "simulated"


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 over the certificate's DER, hex."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def intel_sgx_root_ca() -> x509.Certificate:
    """Intel's SGX Root CA, as shipped with the package (its fingerprint checked)."""
    cert = load_certificate(INTEL_SGX_ROOT_CA_FILE.read_bytes())
    if fingerprint(cert) != INTEL_SGX_ROOT_CA_SHA256:
        raise TrustedRootFormatError(
            f"{INTEL_SGX_ROOT_CA_FILE} has SHA-256 {fingerprint(cert)}, not Intel's SGX Root CA "
            f"{INTEL_SGX_ROOT_CA_SHA256}"
        )
    return cert


def simulated_root() -> x509.Certificate:
    """The root of tdxsim's well-known simulated platform (SIMULATED: no hardware behind it)."""
    return load_certificate(SIMULATED_ROOT_FILE.read_bytes())


def resolve_root(choice: str | None) -> tuple[x509.Certificate, str]:
    """The root for `--root`: None or "intel" (default), "simulated", or a PEM/DER file path;
    returns it and a label saying what it is."""
    if choice is None or choice == ROOT_INTEL:
        return intel_sgx_root_ca(), "Intel SGX Root CA (shipped with the verifier)"
    if choice == ROOT_SIMULATED:
        return simulated_root(), "tdxsim SIMULATED root (no hardware root of trust)"
    path = Path(choice)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrustedRootFormatError(f"root file {choice}: {exc.strerror}") from exc
    cert = load_certificate(data)
    return cert, f"{path} ({cert.subject.rfc4514_string()}, SHA-256 {fingerprint(cert)})"
