"""`invoke run` on the local backend: the boot flow of DESIGN.md, step by step, with a timing each.

What exists runs for real: the IGVM image is built and measured offline, the simulated TDX module
builds the TD from it, the vTPM (libtpms) is manufactured with EK certificates and a CA bound to a
simulated TD quote, a relying party verifies quote -> CA -> EK certificates, and tpm2-pytss talks
to the vTPM over the mssim TCTI. Steps whose parts do not exist yet are printed as such.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from igvm.build import build as build_igvm
from igvm.measure import mrtd as offline_mrtd
from igvm.measure import rtmr_predict
from orchestrator.local_attester import SimulatedTdAttester, separator_events
from tdxsim.loader import load_igvm
from tdxsim.quoting import SimulatedAttestation
from verifier.quote import verify_quote
from vtpm.attest import check_binding
from vtpm.certs import OID_TD_QUOTE, verify_issued_by
from vtpm.engine import TpmEngine
from vtpm.manufacture import ManufactureResult, manufacture
from vtpm.server import VtpmServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = ROOT / "igvm" / "recipes" / "test-image.yaml"
NOT_YET = (
    "L1 paravisor boot from the measured image (svsm/): not built yet",
    "L2 guests, the TPM CRB path and the host relay (l2-firmware/, svsm/): not built yet",
)
PCR_DEBUG = 16


class BootError(RuntimeError):
    """A boot step failed; the message names the step."""


@dataclass
class BootReport:
    """What a run established, for callers (tests, `invoke run`) that want fields."""

    image: Path
    mrtd_offline: bytes = b""
    mrtd_td: bytes = b""
    tcti: str = ""
    manufactured: ManufactureResult | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)


@contextmanager
def _step(report: BootReport, title: str, out: Callable[[str], None]) -> Iterator[None]:
    out(f"[{len(report.steps) + 1}] {title} ...")
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:
        raise BootError(f"step {len(report.steps) + 1} ({title}) failed: {exc}") from exc
    elapsed = time.perf_counter() - start
    report.steps.append((title, elapsed))
    out(f"    done in {elapsed * 1000:.1f} ms")


def _quote_of(ca_der: bytes) -> bytes:
    """The TD quote a relying party finds in the vTPM CA certificate."""
    ext = x509.load_der_x509_certificate(ca_der).extensions.get_extension_for_oid(OID_TD_QUOTE)
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise BootError("the CA certificate's TD quote extension is not raw bytes")
    return value.value


def run_local(
    recipe: Path = DEFAULT_RECIPE,
    image: Path = ROOT / "out" / "tdp.igvm",
    out: Callable[[str], None] = print,
) -> BootReport:
    """Run every boot step that exists; raises BootError naming the step that failed."""
    report = BootReport(image=image)
    platform = SimulatedAttestation.create()

    with _step(report, f"build the IGVM image from {recipe.name}", out):
        image.parent.mkdir(parents=True, exist_ok=True)
        report.mrtd_offline = build_igvm(recipe, image)
        out(f"    {image}: MRTD (offline) {report.mrtd_offline.hex()}")

    with _step(report, "host builds the TD on the simulated TDX module (PAGE.ADD/MR.EXTEND)", out):
        module = load_igvm(image, attestation=platform.reports).finalize()
        report.mrtd_td = module.td.mrtd
        if report.mrtd_td != offline_mrtd(image):
            raise BootError(f"TD MRTD {report.mrtd_td.hex()} differs from the offline one")
        out("    MRTD of the TD equals `igvm measure` of the file")

    engine = TpmEngine()
    try:
        attester = SimulatedTdAttester(module, platform.quoting)
        results: list[ManufactureResult] = []

        def provision(tpm: TpmEngine) -> object:
            results.append(manufacture(tpm, attester=attester))
            return results[-1]

        server = VtpmServer(engine, "127.0.0.1", 0, provision=provision)
        with _step(report, "vTPM: libtpms, EKs (RSA-2048 L-1, ECC P-256 L-2), CA bound to a "
                   "TD quote [host stands in for L1 here]", out):  # fmt: skip
            server.start_tpm()
            report.manufactured = results[-1]
            report.tcti = server.tcti_strings()["mssim"]
            for kind, ek in report.manufactured.eks.items():
                out(f"    EK {kind}: name {ek.name.hex()}")
        thread = threading.Thread(target=server.serve_forever, name="vtpm", daemon=True)
        thread.start()
        try:
            _verify(report, platform, out)
            _exercise(report, out)
        finally:
            server.request_stop()
            thread.join(timeout=5)
    finally:
        engine.close()

    for line in NOT_YET:
        out(f"[-] {line}")
    total = sum(seconds for _, seconds in report.steps)
    out(f"done: {len(report.steps)} steps in {total * 1000:.0f} ms; quotes are SIMULATED (tdxsim)")
    return report


def _verify(report: BootReport, platform: SimulatedAttestation, out: Callable[[str], None]) -> None:
    made = report.manufactured
    assert made is not None
    with _step(report, "relying party: TD quote -> vTPM CA -> EK certificates", out):
        quote = _quote_of(made.ca_certificate)
        parsed = verify_quote(quote, platform.quoting.trusted_root_der)
        out("    quote signature and PCK chain verify against the tdxsim SIMULATION root")
        check_binding(quote, made.ca_public_point)
        out("    REPORTDATA = SHA-384(CA public key)")
        if parsed.body.mrtd != report.mrtd_offline:
            raise BootError("the quote's MRTD is not the image's MRTD")
        out("    quote MRTD equals the image's offline MRTD")
        if tuple(parsed.body.rtmrs) != rtmr_predict(separator_events()):
            raise BootError("the quote's RTMRs do not replay from the event log")
        out("    RTMR0..3 replay from the separator events")
        for kind, ek in made.eks.items():
            verify_issued_by(ek.certificate, made.ca_certificate)
            out(f"    EK certificate ({kind}) is issued by the CA")


def _exercise(report: BootReport, out: Callable[[str], None]) -> None:
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMU_HA

    with _step(report, f"tpm2-pytss over {report.tcti}", out), ESAPI(report.tcti) as ectx:
        out(f"    GetRandom(16): {bytes(ectx.get_random(16)).hex()}")
        digest = hashlib.sha256(b"tdpvtpm run").digest()
        handle = ESYS_TR.parse(f"PCR{PCR_DEBUG}")
        values = TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))
        ectx.pcr_extend(handle, TPML_DIGEST_VALUES([values]))
        _, _, digests = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"sha256:{PCR_DEBUG}"))
        value = bytes(digests[0])  # `digests` stays referenced while read (tpm2-pytss pitfall)
        if value != hashlib.sha256(bytes(32) + digest).digest():
            raise BootError(f"PCR{PCR_DEBUG} is {value.hex()}, not the extended value")
        out(f"    PCR_Extend + PCR_Read sha256:{PCR_DEBUG} = {value.hex()} (as computed)")


def main(recipe: str = "", image: str = "") -> int:
    """Entry point of `invoke run`; returns the exit status."""
    try:
        run_local(
            Path(recipe) if recipe else DEFAULT_RECIPE,
            Path(image) if image else ROOT / "out" / "tdp.igvm",
        )
    except BootError as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 1
    return 0
