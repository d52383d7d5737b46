"""`python -m verifier quote`: one line per step, the measurements, the TCB status, exit 0 only
when the chain verifies and the status is accepted."""

from __future__ import annotations

import datetime
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tdxsim.attestation.collateral import SimulatedCollateral
from tdxsim.attestation.pck import WELL_KNOWN_SEED
from tdxsim.attestation.quoting import SimulatedAttestation
from verifier.cli import main

from ...support.dcap import PCS_FILES, PCS_SET, PUBLIC_QUOTES, PUBLIC_SET, public_quote
from ...support.public_data import require
from .conftest import REPORTDATA, TD

ROOT = Path(__file__).resolve().parents[3]
ISSUED = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
AT = "2026-11-02T00:00:00Z"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()


@pytest.fixture(scope="module")
def platform() -> SimulatedAttestation:
    return SimulatedAttestation.create(WELL_KNOWN_SEED)


def _files(
    tmp_path: Path, platform: SimulatedAttestation, version: int = 4, **kwargs: object
) -> tuple[str, str]:
    quote = platform.quoting.quote(platform.reports.tdreport(TD, REPORTDATA), version=version)
    collateral = SimulatedCollateral(platform.quoting.pck, issue_date=ISSUED, **kwargs)  # type: ignore[arg-type]
    (tmp_path / "quote.bin").write_bytes(quote + bytes(32))
    (tmp_path / "collateral.json").write_text(collateral.to_json())
    return str(tmp_path / "quote.bin"), str(tmp_path / "collateral.json")


def test_simulated_quote_verifies_step_by_step(
    tmp_path: Path, platform: SimulatedAttestation
) -> None:
    quote, collateral = _files(tmp_path, platform)
    status, out = run("quote", quote, "--root", "simulated", "--collateral", collateral, "--at", AT)
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0] == "root: tdxsim SIMULATED root (no hardware root of trust)"
    steps = [line.split(":")[0] for line in lines if line.startswith("ok   ")]
    assert steps[:3] == ["ok   parse", "ok   PCK chain", "ok   QE report signature"]
    assert steps[-1] == "ok   TCB status"
    assert "32 bytes after the signature data" in lines[1]
    assert f"MRTD         {TD.mrtd.hex()}" in lines
    assert f"RTMR3        {TD.rtmr[3].hex()}" in lines
    assert f"REPORTDATA   {REPORTDATA.hex()}" in lines
    assert "ATTRIBUTES   0000000010000000" in lines and "XFAM         00000000000000e7" in lines
    assert "TCB status: UpToDate (advisories: none)" in lines
    assert lines[-1] == "quote VERIFIED"


def test_out_of_date_fails_with_the_step_unless_accepted(
    tmp_path: Path, platform: SimulatedAttestation
) -> None:
    quote, collateral = _files(tmp_path, platform, version=5, platform_status="OutOfDate")
    args = ("quote", quote, "--root", "simulated", "--collateral", collateral, "--at", AT)
    status, out = run(*args)
    assert status == 1
    assert out.splitlines()[-1].startswith(
        "quote REJECTED at step 'TCB status': TCB status OutOfDate"
    )
    assert "TEE_TCB_SVN2" in out and "MRSERVICETD" in out
    status, out = run(*args, "--accept", "UpToDate,OutOfDate")
    assert status == 0, out


def test_default_root_is_intel_and_refuses_simulated_quotes(
    tmp_path: Path, platform: SimulatedAttestation
) -> None:
    quote, _ = _files(tmp_path, platform)
    status, out = run("quote", quote, "--at", AT)
    assert status == 1
    assert out.splitlines()[0] == "root: Intel SGX Root CA (shipped with the verifier)"
    assert "quote REJECTED at step 'PCK chain'" in out


def test_root_file_expiry_and_json(tmp_path: Path, platform: SimulatedAttestation) -> None:
    quote, collateral = _files(tmp_path, platform)
    root = tmp_path / "root.pem"
    root.write_bytes(platform.quoting.pck.root_pem())
    late = "2027-01-01T00:00:00Z"
    status, out = run(
        "quote", quote, "--root", str(root), "--collateral", collateral, "--at", late, "--json"
    )
    assert status == 1
    document = json.loads(out)
    assert document["ok"] is False and document["failed_step"] == "CRLs"
    assert "not current at 2027-01-01" in document["reason"]
    assert document["measurements"]["MRTD"] == TD.mrtd.hex()
    assert document["trailing_bytes"] == 32
    status, out = run(
        "quote", quote, "--root", str(root), "--collateral", collateral, "--at", AT, "--json"
    )
    assert status == 0 and json.loads(out)["tcb_status"] == "UpToDate"


def test_usage_errors_exit_2(tmp_path: Path, platform: SimulatedAttestation) -> None:
    quote, _ = _files(tmp_path, platform)
    for bad in (("--accept", "Fine"), ("--at", "yesterday")):
        with pytest.raises(SystemExit) as exit_:
            run("quote", quote, *bad)
        assert exit_.value.code == 2
    status, _ = run("quote", quote, "--root", str(tmp_path / "missing.pem"))
    assert status == 1


@pytest.mark.parametrize(("name", "collateral"), PUBLIC_QUOTES)
def test_public_quotes_from_the_command_line(name: str, collateral: str) -> None:
    data = public_quote(name, collateral)
    base = require(PUBLIC_SET, name, collateral)
    at = data.at.isoformat()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "verifier",
            "quote",
            str(base / name),
            "--collateral",
            str(base / collateral),
            "--at",
            at,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if name != "tdx_quote_outdated":
        assert result.returncode == 0, result.stdout
        assert "TCB status: UpToDate" in result.stdout
    else:
        assert result.returncode == 1
        assert "quote REJECTED at step 'TCB level'" in result.stdout


def test_collateral_folder_of_pcs_responses(tmp_path: Path, platform: SimulatedAttestation) -> None:
    quote, _ = _files(tmp_path, platform, platform_status="OutOfDate")
    folder = tmp_path / "pcs"
    SimulatedCollateral(
        platform.quoting.pck, platform_status="OutOfDate", issue_date=ISSUED
    ).write_pcs_directory(folder)
    args = ("quote", quote, "--root", "simulated", "--collateral", str(folder), "--at", AT)
    status, out = run(*args, "--accept", "OutOfDate")
    assert status == 0, out
    assert "TCB status: OutOfDate (advisories: SIMULATED-SA-00001)" in out
    (folder / "pck_crl.der").unlink()
    status, out = run(*args)
    assert status == 1
    assert out.splitlines()[-1] == (
        f"quote REJECTED at step 'collateral': {folder} has no pck_crl.der or pck_crl.pem"
    )
    status, out = run(*args, "--json")
    assert status == 1 and json.loads(out)["failed_step"] == "collateral"


def test_public_pcs_responses_from_the_command_line(tmp_path: Path) -> None:
    source = require(PCS_SET, "tdx_quote_5.dat", "tcb_info_90c06f000000.json", *PCS_FILES)
    for name, saved in (
        ("tcb_info_90c06f000000.json", "tcb_info.json"),
        ("td_qe_identity.json", "qe_identity.json"),
        ("tcb_signing_chain.pem", "tcb_info_issuer_chain.pem"),
        ("pck_crl_platform.der", "pck_crl.der"),
        ("root_ca_crl.der", "root_ca_crl.der"),
    ):
        (tmp_path / saved).write_bytes((source / name).read_bytes())
    status, out = run(
        "quote",
        str(source / "tdx_quote_5.dat"),
        "--collateral",
        str(tmp_path),
        "--at",
        "2026-03-17T00:00:00Z",
    )
    assert status == 1
    assert "ok   QE identity match" in out
    assert out.splitlines()[-1].startswith("quote REJECTED at step 'TCB level'")
