"""`invoke run` on the local backend: every step that exists runs and checks what it claims."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from igvm.measure import mrtd
from orchestrator.l1image import build_l1_image

ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    # A subprocess: libtpms allows one TPM per process and other tests hold one.
    code = "import sys; from orchestrator.boot import main; sys.exit(main(*sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_run_builds_boots_attests_and_talks_to_the_vtpm(tmp_path: Path) -> None:
    image = tmp_path / "tdp.igvm"
    result = _run("", str(image))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    offline = re.search(r"MRTD \(offline\) ([0-9a-f]{96})", out)
    assert offline is not None
    assert offline.group(1) == mrtd(image).hex()
    for claim in (
        "MRTD of the TD equals `igvm measure` of the file",
        "L1| svsm step 2 (accept memory, NUM_L2_VMS, launch parameters into RTMR0) done in",
        "L1| svsm step 3 (vTPM manufacture: EKs, CA bound to a TD quote) done in",
        "L1| svsm step 4 (PCR0: svsm version and L2 image; separators into RTMR0..3) done in",
        "L1| L2[1]| selftest: pass",
        "L2 1 exited with code 0",
        "verify against the tdxsim SIMULATION root",
        "REPORTDATA = SHA-384(CA public key)",
        "quote MRTD equals the image's offline MRTD",
        "RTMR0..3 of the quote replay from the CA certificate's event log (1 events)",
        "separators into RTMR0..3 after the quote",
        "EK certificate (rsa) is issued by the CA",
        "EK certificate (ecc) is issued by the CA",
        "NUM_L2_VMS read by L1 = 1, as created",
        "relying party through the L2 path (`invoke attest`)",
        "ok  credential activation (AK and EK in one TPM)",
        "ok  PCR0 against the reference",
        "attested; SIMULATED TD quote",
        "ok  firmware event log: 3 events replay to the quoted PCRs [0, 4]",
        ": the host relay -> L2 1's CRB -> its vTPM in L1",
        "(as computed)",
        "quotes are SIMULATED",
    ):
        assert claim in out
    assert "NOT the L1 vTPM" not in out and "directly served" not in out
    assert "invoke run --serve" in out  # how to keep serving the L1 vTPM is said
    # L1 ran from the measured image that the recipe placed: the image on disk is this checkout's
    assert (ROOT / "out" / "l1.img").read_bytes() == build_l1_image(
        [ROOT / "svsm", ROOT / "vtpm", ROOT / "tdxdefs"], "svsm.entry:main"
    )


def test_broken_recipe_fails_naming_the_step(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("platform: {compatibility_mask: 3}\ncomponents: []\n")
    result = _run(str(recipe), str(tmp_path / "x.igvm"))
    assert result.returncode == 1
    assert "step 1 (build the L1 image and the IGVM image from bad.yaml) failed" in result.stderr


def test_a_lying_host_fails_the_l1_step_with_a_clear_message(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from orchestrator.errors import LocalBootError\n"
        "from orchestrator.boot import run_local, DEFAULT_RECIPE\n"
        "from tdxsim.host.faults import FaultSet\n"
        "try:\n    run_local(DEFAULT_RECIPE, Path(sys.argv[1]), "
        "faults=FaultSet.parse('getquote-status=error'))\n"
        "except LocalBootError as exc:\n    print(exc); sys.exit(1)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "t.igvm")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "step 3 (L1 (svsm) boots from the measured image" in result.stdout
    assert "L1 run failed: svsm.boot.BootStepError: svsm step 3 (vTPM manufacture" in result.stdout
    assert "GetQuote buffer status at offset 8: 0x8000000000000000" in result.stdout
    assert "[4]" not in result.stdout  # the relying party never sees an unbound CA
