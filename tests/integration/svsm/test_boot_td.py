"""svsm boots in the TD process from the measured image (boot steps 2-4), and a lying host makes the
boot fail with a clear message, never a hang."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from igvm.build import build
from orchestrator.boot import DEFAULT_RECIPE
from svsm import eventlog
from svsm.boot import SVSM_VERSION
from tdxsim.faults import FaultSet
from tdxsim.l1image import build_l1_image
from tdxsim.vmm import RunResult, Vmm, simulated_platform
from verifier.quote import verify_quote
from vtpm.attest import EV_SEPARATOR, check_binding
from vtpm.certs import OID_EVENT_LOG, OID_TD_QUOTE, sec1_point, verify_issued_by

ROOT = Path(__file__).resolve().parents[3]
RAM = [(0, 32 << 20)]
MAC_KEY, QUOTING = simulated_platform(b"svsm integration")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project recipe with the L1 image built from this checkout."""
    tmp = tmp_path_factory.mktemp("svsm")
    (tmp / "l1.img").write_bytes(build_l1_image([ROOT / "svsm", ROOT / "vtpm"], "svsm.boot:main"))
    recipe = yaml.safe_load(DEFAULT_RECIPE.read_text())
    recipe["components"][0]["file"] = str(tmp / "l1.img")
    (tmp / "tdp.yaml").write_text(yaml.safe_dump(recipe))
    build(tmp / "tdp.yaml", tmp / "tdp.igvm")
    return tmp / "tdp.igvm"


def boot(image: Path, faults: str = "") -> tuple[RunResult, bytes, str]:
    with Vmm(QUOTING, FaultSet.parse(faults)) as vmm:
        vmm.create(RAM, mac_key=MAC_KEY, num_l2_vms=2)
        vmm.load_igvm(image, RAM)
        vmm.aug_rest()
        mrtd = vmm.finalize()
        result = vmm.run(60)
        assert vmm.host is not None
        return result, mrtd, bytes(vmm.host.uart.output).decode()


def _ext(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes:
    value = cert.extensions.get_extension_for_oid(oid).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def test_full_boot_in_the_td_process(image: Path) -> None:
    result, mrtd, uart = boot(image)
    assert result.status == "done", result.detail
    out = json.loads(result.output)
    assert out["num_l2_vms"] == 2  # read with TDG.VM.RD, as the host created the TD
    ca = x509.load_der_x509_certificate(bytes.fromhex(out["ca_certificate"]))
    quote = verify_quote(_ext(ca, OID_TD_QUOTE), QUOTING.trusted_root_der)
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert quote.body.mrtd == mrtd
    check_binding(_ext(ca, OID_TD_QUOTE), sec1_point(public))
    quoted = eventlog.parse(_ext(ca, OID_EVENT_LOG))
    assert eventlog.replay(quoted) == quote.body.rtmrs
    # RTMR0 at quote time: the launch parameters only; separators come after the quote
    assert [(e.rtmr, e.event_type) for e in quoted] == [(0, eventlog.EV_PLATFORM_CONFIG_FLAGS)]
    assert quote.body.rtmrs[1:] == (bytes(48),) * 3
    full = eventlog.parse(bytes.fromhex(out["cc_event_log"]))
    assert full[:1] == quoted and [e.event_type for e in full[1:]] == [EV_SEPARATOR] * 4
    for der in out["ek_certificates"].values():
        verify_issued_by(bytes.fromhex(der), ca.public_bytes(Encoding.DER))
    assert set(out["ek_certificates"]) == {"rsa", "ecc"}
    (pcr,) = out["pcr_events"]
    assert bytes.fromhex(pcr["data"]) == SVSM_VERSION.encode() + b"\0"
    assert pcr["digests"]["0x000c"] == hashlib.sha384(SVSM_VERSION.encode() + b"\0").hexdigest()
    assert out["simulated_quote"] is True
    assert list(out["timings_ms"]) == [
        "accept memory, NUM_L2_VMS, launch parameters into RTMR0",
        "vTPM manufacture: EKs, CA bound to a TD quote",
        "PCR0 svsm version, separators into RTMR0..3",
    ]
    for step in (2, 3, 4):
        assert f"svsm step {step} (" in uart and " done in " in uart


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        (
            "getquote-status=error",
            "svsm step 3 (vTPM manufacture: EKs, CA bound to a TD quote) failed: "
            "manufacture: attester 'tdx' failed: GetQuote buffer status at offset 8: "
            "0x8000000000000000 (host reports an error)",
        ),
        ("getquote-status=inflight", "GetQuote buffer status at offset 8: still in flight after"),
        ("getquote-length=long", "GetQuote buffer out_len at offset 20"),
        ("mapgpa-retry=always", "MapGPA of 0x800001200000 (+0x2000): the host answered RETRY"),
    ],
)
def test_lying_host_fails_the_boot_with_a_clear_message(
    image: Path, faults: str, message: str
) -> None:
    start = time.monotonic()
    result, _mrtd, uart = boot(image, faults)
    assert result.status == "failed"
    assert message in result.detail
    assert "FAILED" in uart  # L1 also said so on its UART
    assert time.monotonic() - start < 30  # bounded: no hang
