"""tpm2-tools against a served vTPM: EK certificates, EK creation, quote and checkquote."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.vtpm_process import VtpmProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tpm2_getekcertificate") is None, reason="no tpm2-tools"),
]

TOOL_TIMEOUT_S = 60


def tool(
    server: VtpmProcess, cwd: Path, *args: str, ok: bool = True, tcti: str = "mssim"
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TPM2TOOLS_TCTI=getattr(server, tcti), TSS2_LOG="all+none")
    result = subprocess.run(
        list(args),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        check=False,
    )
    if ok:
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


def spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("tcti", ["mssim", "swtpm"])
def test_getekcertificate_and_createek(vtpm_server: VtpmProcess, tmp_path: Path, tcti: str) -> None:
    # With two -o files, tpm2_getekcertificate writes the RSA certificate first, then the ECC one.
    tool(
        vtpm_server, tmp_path, "tpm2_getekcertificate", "-o", "rsa.der", "-o", "ecc.der", tcti=tcti
    )
    for kind, alg in (("rsa", "rsa"), ("ecc", "ecc")):
        cert = x509.load_der_x509_certificate((tmp_path / f"{kind}.der").read_bytes())
        tool(
            vtpm_server,
            tmp_path,
            "tpm2_createek",
            "-G",
            alg,
            "-c",
            f"{kind}.ctx",
            "-u",
            f"{kind}.pem",
            "-f",
            "pem",
            tcti=tcti,
        )
        ek_key = serialization.load_pem_public_key((tmp_path / f"{kind}.pem").read_bytes())
        assert spki(cert.public_key()) == spki(ek_key), f"{kind} EK certificate key mismatch"
        tool(vtpm_server, tmp_path, "tpm2_flushcontext", "-t", tcti=tcti)


def test_getekcertificate_chain_verifies_with_openssl(
    vtpm_server: VtpmProcess, tmp_path: Path
) -> None:
    tool(vtpm_server, tmp_path, "tpm2_getekcertificate", "-o", "rsa.der", "-o", "ecc.der")
    chain = b""
    index = 0x01C00100
    while True:
        out = tmp_path / f"chain{index:x}.bin"
        result = tool(
            vtpm_server,
            tmp_path,
            "tpm2_nvread",
            "-C",
            "o",
            "-o",
            str(out),
            f"0x{index:08X}",
            ok=False,
        )
        if result.returncode:
            break
        chain += out.read_bytes()
        index += 1
    ca = x509.load_der_x509_certificate(chain)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for kind in ("rsa", "ecc"):
        cert = x509.load_der_x509_certificate((tmp_path / f"{kind}.der").read_bytes())
        pem = tmp_path / f"{kind}.pem"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        result = subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(pem)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_quote_and_checkquote(vtpm_server: VtpmProcess, tmp_path: Path) -> None:
    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        return tool(vtpm_server, tmp_path, *args, ok=ok)

    # Without a resource manager the tools leave objects loaded: start from none.
    run("tpm2_flushcontext", "-t")
    run("tpm2_createek", "-G", "ecc", "-c", "ek.ctx", "-u", "ek.pub")
    run(
        "tpm2_createak",
        "-C",
        "ek.ctx",
        "-G",
        "ecc",
        "-g",
        "sha256",
        "-s",
        "ecdsa",
        "-c",
        "ak.ctx",
        "-u",
        "ak.pub",
        "-f",
        "pem",
        "-n",
        "ak.name",
    )
    run("tpm2_flushcontext", "-t")  # ak.ctx is a saved context; tpm2_quote loads it again
    run("tpm2_pcrextend", "16:sha256=" + "ab" * 32)
    run(
        "tpm2_quote",
        "-c",
        "ak.ctx",
        "-l",
        "sha256:0,1,16",
        "-q",
        "a1b2c3d4",
        "-m",
        "msg",
        "-s",
        "sig",
        "-o",
        "pcrs",
        "-g",
        "sha256",
    )

    def checkquote(pcrs: str, nonce: str, ok: bool = True) -> int:
        args = ("-u", "ak.pub", "-m", "msg", "-s", "sig", "-f", pcrs, "-g", "sha256", "-q", nonce)
        return run("tpm2_checkquote", *args, ok=ok).returncode

    checkquote("pcrs", "a1b2c3d4")
    # A different nonce, or PCR values that are not the quoted ones, must be refused.
    assert checkquote("pcrs", "deadbeef", ok=False) != 0
    run("tpm2_pcrextend", "16:sha256=" + "cd" * 32)
    run("tpm2_pcrread", "sha256:0,1,16", "-o", "pcrs-now")
    assert checkquote("pcrs-now", "a1b2c3d4", ok=False) != 0
    run("tpm2_flushcontext", "-t")
