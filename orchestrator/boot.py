"""`invoke run` on the local backend: the boot flow of DESIGN.md, step by step, with a timing each.

What exists runs for real: the L1 image (svsm + vtpm) is built and placed in the IGVM image, which
is measured offline; the host VMM builds the TD in its own process on the simulated TDX module and
checks MRTD; L1 boots from the measured image and does boot steps 2-4 (memory, NUM_L2_VMS, RTMR0,
a libtpms vTPM with EKs and a CA bound to a SIMULATED TD quote, PCR0, separators); a relying party
verifies quote -> CA -> EK certificates and replays the RTMRs; and tpm2-pytss talks over the mssim
TCTI to a directly served vTPM (`vtpm serve`, fake attester). The L1 vTPM itself, reached through an
L2's CRB and the host relay, is what `invoke run --serve` serves (orchestrator/serve.py).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from igvm.build import build as build_igvm
from orchestrator.errors import LocalBootError, reason
from orchestrator.l2image import L2_IMAGE, write_l2_image
from orchestrator.product import (
    DEFAULT_RECIPE,
    L1_ENTRY,
    L1_IMAGE,
    L1_PACKAGES,
    MAX_L2_VMS,
    NUM_L2_VMS,
    ROOT,
    TD_RAM,
    write_l1_image,
)
from tdxsim.attestation.quoting import QuotingService
from tdxsim.host.faults import FaultSet, FaultSpecError
from tdxsim.host.vmm import RunResult, RunStatus, Vmm, simulated_platform
from verifier.td_attestation import verify_td_attestation

L1_TIMEOUT_S = 120.0
SERVE_HINT = (
    "to keep serving the L1 vTPM through an L2 to your own TPM clients: `invoke run --serve`"
)
PCR_DEBUG = 16


@dataclass
class L1Summary:
    """What L1 returned (its JSON summary) and what the host saw of the run."""

    num_l2_vms: int
    ca_certificate: bytes
    ek_certificates: dict[str, bytes]
    cc_event_log: bytes
    raw: dict[str, Any]
    run: RunResult
    uart: str

    @property
    def l2(self) -> list[dict[str, Any]]:
        """Each L2's outcome as L1 reported it (vm, state, exit_code, fatal, exits, console)."""
        value = self.raw.get("l2", [])
        return value if isinstance(value, list) else []

    @property
    def alias_map(self) -> list[str]:
        """L1's GPA x VM permission map."""
        value = self.raw.get("alias_map", [])
        return [str(line) for line in value] if isinstance(value, list) else []

    @classmethod
    def parse(cls, run: RunResult, uart: str) -> L1Summary:
        """Parse L1's output; anything malformed is a LocalBootError naming the key."""
        try:
            raw = json.loads(run.output)
            return cls(
                int(raw["num_l2_vms"]),
                bytes.fromhex(raw["ca_certificate"]),
                {k: bytes.fromhex(v) for k, v in raw["ek_certificates"].items()},
                bytes.fromhex(raw["cc_event_log"]),
                raw,
                run,
                uart,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LocalBootError(f"L1's summary is malformed: {exc!r}") from exc


@dataclass
class BootReport:
    """What a run established, for callers (tests, `invoke run`) that want fields."""

    image: Path
    mrtd_offline: bytes = b""
    mrtd_td: bytes = b""
    tcti: str = ""
    l1: L1Summary | None = None
    steps: list[tuple[str, float]] = field(default_factory=list)
    l2_failures: list[str] = field(default_factory=list)


@contextmanager
def _step(report: BootReport, title: str, out: Callable[[str], None]) -> Iterator[None]:
    out(f"[{len(report.steps) + 1}] {title} ...")
    start = time.perf_counter()
    try:
        yield
    except Exception as exc:
        raise LocalBootError(
            f"step {len(report.steps) + 1} ({title}) failed: {reason(exc)}"
        ) from exc
    elapsed = time.perf_counter() - start
    report.steps.append((title, elapsed))
    out(f"    done in {elapsed * 1000:.1f} ms")


def build_product(
    image: Path = ROOT / "out" / "tdp.igvm",
    recipe: Path = DEFAULT_RECIPE,
    l2_image: Path | None = None,
    out: Callable[[str], None] = print,
) -> bytes:
    """`invoke build`: the L2 image (l2-firmware by gcc, or `l2_image`), the L1 image (svsm, vtpm,
    tdxdefs) and the IGVM with both; prints and returns the MRTD."""
    l2 = write_l2_image(l2_image)
    out(f"{L2_IMAGE}: {len(l2)} bytes ({l2_image or 'l2-firmware, built by gcc'})")
    l1 = write_l1_image()
    out(f"{L1_IMAGE}: {len(l1)} bytes ({', '.join(p.name for p in L1_PACKAGES)})")
    image.parent.mkdir(parents=True, exist_ok=True)
    mrtd = build_igvm(recipe, image)
    out(f"{image}: MRTD {mrtd.hex()}")
    return mrtd


def run_local(
    recipe: Path = DEFAULT_RECIPE,
    image: Path = ROOT / "out" / "tdp.igvm",
    out: Callable[[str], None] = print,
    *,
    faults: FaultSet | None = None,
    l2_count: int = NUM_L2_VMS,
    l2_image: Path | None = None,
    show_aliases: bool = False,
) -> BootReport:
    """Run every boot step that exists; raises LocalBootError naming the step that failed.
    `faults` makes the untrusted host misbehave on purpose (tdxsim.host.faults); `l2_count` L2
    guests boot `l2_image` (default: l2-firmware, built here); `report.l2_failures` names every
    L2 that did not end with exit code 0."""
    if not 1 <= l2_count <= MAX_L2_VMS:
        raise LocalBootError(f"--l2-count {l2_count}: a TD has 1 to {MAX_L2_VMS} L2 VMs")
    report = BootReport(image=image)
    mac_key, quoting = simulated_platform()

    with _step(report, f"build the L1 image and the IGVM image from {recipe.name}", out):
        l1 = write_l1_image()
        packages = ", ".join(p.name for p in L1_PACKAGES)
        out(f"    {L1_IMAGE}: {len(l1)} bytes ({packages}; entry {L1_ENTRY})")
        l2 = write_l2_image(l2_image)
        what = f"the user's image {l2_image}" if l2_image else "l2-firmware, built by gcc"
        out(f"    {L2_IMAGE}: {len(l2)} bytes ({what})")
        image.parent.mkdir(parents=True, exist_ok=True)
        report.mrtd_offline = build_igvm(recipe, image)
        out(f"    {image}: MRTD (offline) {report.mrtd_offline.hex()}")

    with Vmm(quoting, faults) as vmm:
        with _step(report, "host VMM builds the TD in its own process (PAGE.ADD/MR.EXTEND, "
                   "parameter areas, finalize)", out):  # fmt: skip
            vmm.create(TD_RAM, mac_key=mac_key, num_l2_vms=l2_count)
            vmm.load_igvm(image, TD_RAM)
            vmm.aug_rest()
            report.mrtd_td = vmm.finalize()
            if report.mrtd_td != report.mrtd_offline:
                raise LocalBootError(f"TD MRTD {report.mrtd_td.hex()} differs from the offline one")
            out("    MRTD of the TD equals `igvm measure` of the file")
        title = (
            "L1 (svsm) boots from the measured image: accept, NUM_L2_VMS, RTMR0; vTPM with "
            "EKs and a CA bound to a TD quote; PCR0, separators; L2 guests"
        )
        with _step(report, title, out):
            run = vmm.run(L1_TIMEOUT_S)
            uart = bytes(vmm.host.uart.output).decode(errors="replace") if vmm.host else ""
            for line in uart.splitlines():
                out(f"    L1| {line}")
            if run.status != RunStatus.DONE:
                detail = run.detail or "the host gave no detail"
                raise LocalBootError(f"L1 run {run.status}: {detail}")
            report.l1 = L1Summary.parse(run, uart)
            out(f"    L1 returned after {run.exits} TD exits in {run.seconds * 1000:.0f} ms")
    _verify(report, quoting, out, l2_count)
    _l2_outcomes(report, out, show_aliases)
    if l2_image is None:
        _through_l2(report, image, out)
    else:
        out("[i] the vTPM through an L2 skipped: a user's L2 image does not serve it")

    out(f"[i] {SERVE_HINT}")
    total = sum(seconds for _, seconds in report.steps)
    out(f"done: {len(report.steps)} steps in {total * 1000:.0f} ms; quotes are SIMULATED (tdxsim)")
    return report


def _l2_rows(table: list[str]) -> list[str]:
    """The rows of the alias map an L2 has any access in (`--show-aliases` prints every row)."""
    return [line for line in table[1:] if "(L1 only)" not in line]


def _l2_outcomes(report: BootReport, out: Callable[[str], None], show_aliases: bool) -> None:
    """Each L2's ending, as L1 reported it; the alias map on request."""
    l1 = report.l1
    assert l1 is not None
    timings = l1.raw.get("timings_ms", {})
    if isinstance(timings, dict) and timings:
        out("[-] boot timeline inside the TD (L1's steps, in the order they started):")
        for step, ms in timings.items():
            out(f"    {float(ms):8.1f} ms  step {step}")
        total = sum(float(ms) for ms in timings.values())
        out(f"    {total:8.1f} ms  in all")
    out("[-] L1's page aliases (GPA x VM; R read, W write, X execute; L1 has all):")
    for line in l1.alias_map if show_aliases else l1.alias_map[:1] + _l2_rows(l1.alias_map):
        out(f"    {line}")
    for entry in l1.l2:
        vm, code, fatal = entry.get("vm"), entry.get("exit_code"), entry.get("fatal") or ""
        exits = entry.get("exits") or {}
        counted = ", ".join(f"{n} {name}" for name, n in sorted(exits.items()))
        if code is not None:
            out(f"L2 {vm} exited with code {code} ({counted})")
        else:
            out(f"L2 {vm} stopped: {fatal} ({counted})")
        if code != 0:
            report.l2_failures.append(
                f"L2 {vm}: " + (f"exit code {code}" if fatal == "" else fatal)
            )


def _verify(
    report: BootReport, quoting: QuotingService, out: Callable[[str], None], l2_count: int
) -> None:
    """The relying party (verifier.td_attestation) decides; this prints its steps."""
    l1 = report.l1
    assert l1 is not None
    with _step(report, "relying party: TD quote -> vTPM CA -> EK certificates, RTMR replay", out):
        verdict = verify_td_attestation(
            l1.ca_certificate,
            l1.ek_certificates,
            trusted_root=quoting.trusted_root_der,
            root_label="the tdxsim SIMULATION root",
            expected_mrtd=report.mrtd_offline,
            later_event_log=l1.cc_event_log,
        )
        for check in verdict.steps:
            out(f"    {'ok' if check.ok else 'FAILED'}: {check.detail}")
        verdict.raise_for_failure()
        if l1.num_l2_vms != l2_count:
            raise LocalBootError(f"L1 read NUM_L2_VMS = {l1.num_l2_vms}, the TD has {l2_count}")
        out(f"    NUM_L2_VMS read by L1 = {l1.num_l2_vms}, as created")


def _through_l2(report: BootReport, image: Path, out: Callable[[str], None]) -> None:
    """Steps 5 and 6 on the same image, served as `invoke run --serve` serves it: the relying
    party of `invoke attest` (orchestrator.attest), then tpm2-pytss commands, both through the
    host relay, an L2's CRB and that L2's vTPM in L1."""
    from orchestrator.attest import attest, print_report, serving

    title = (
        "relying party through the L2 path (`invoke attest`): serve the L1 vTPM, then TD quote, "
        "CA, EKs, AK by credential, TPM2_Quote with a fresh nonce, PCR0"
    )
    with ExitStack() as served:
        with _step(report, title, out):
            report.tcti = served.enter_context(serving(image))
            result = attest(report.tcti, image)
            print_report(result, lambda line: out(f"    {line}"))
            failed = result.report.failed
            if failed is not None:
                raise LocalBootError(
                    f"attest step '{failed.name}' failed: expected {failed.expected}, "
                    f"actual {failed.actual}"
                )
        _exercise(report, out)


def _exercise(report: BootReport, out: Callable[[str], None]) -> None:
    from tpm2_pytss import ESAPI
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPML_PCR_SELECTION, TPMT_HA, TPMU_HA

    title = f"tpm2-pytss over {report.tcti}: the host relay -> L2 1's CRB -> its vTPM in L1"
    with _step(report, title, out), ESAPI(report.tcti) as ectx:
        out(f"    GetRandom(16): {bytes(ectx.get_random(16)).hex()}")
        digest = hashlib.sha256(b"tdpvtpm run").digest()
        handle = ESYS_TR.parse(f"PCR{PCR_DEBUG}")
        values = TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=digest))
        ectx.pcr_extend(handle, TPML_DIGEST_VALUES([values]))
        _, _, digests = ectx.pcr_read(TPML_PCR_SELECTION.parse(f"sha256:{PCR_DEBUG}"))
        value = bytes(digests[0])  # `digests` stays referenced while read (tpm2-pytss pitfall)
        if value != hashlib.sha256(bytes(32) + digest).digest():
            raise LocalBootError(f"PCR{PCR_DEBUG} is {value.hex()}, not the extended value")
        out(f"    PCR_Extend + PCR_Read sha256:{PCR_DEBUG} = {value.hex()} (as computed)")


def main(
    recipe: str = "",
    image: str = "",
    faults: str = "",
    l2_count: int = NUM_L2_VMS,
    l2_image: str = "",
    show_aliases: bool = False,
) -> int:
    """Entry point of `invoke run`; returns the exit status (2: a bad --faults spec).

    `faults` is a tdxsim.host.faults switch string ("getquote-status=error,irq-storm=100"): the host
    VMM misbehaves that way, so a user can watch L1 cope with (or refuse) a lying host.
    """
    try:
        fault_set = FaultSet.parse(faults)
    except FaultSpecError as exc:
        print(f"run: --faults: {reason(exc)}", file=sys.stderr)
        return 2
    if fault_set.active:
        print(f"host faults on: {fault_set.describe()} (the untrusted host lies on purpose)")
    try:
        report = run_local(
            Path(recipe) if recipe else DEFAULT_RECIPE,
            Path(image) if image else ROOT / "out" / "tdp.igvm",
            faults=fault_set if fault_set.active else None,
            l2_count=l2_count,
            l2_image=Path(l2_image) if l2_image else None,
            show_aliases=show_aliases,
        )
    except LocalBootError as exc:
        print(f"run: {reason(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # outside any step: still a line saying what failed
        print(f"run: failed outside a boot step: {reason(exc)}", file=sys.stderr)
        return 1
    if report.l2_failures:
        print(
            f"run: not every L2 ended with code 0: {'; '.join(report.l2_failures)}", file=sys.stderr
        )
        return 1
    return 0
