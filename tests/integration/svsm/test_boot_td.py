"""svsm boots in the TD process from the measured image (boot steps 2-4) with one vTPM worker per
L2, a lying host makes the boot fail with a clear message, never a hang, and no vTPM worker
outlives the TD process."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from igvm.build import build
from orchestrator.boot import DEFAULT_RECIPE, L1_PACKAGES
from orchestrator.l2image import write_l2_image
from svsm.version import SVSM_VERSION
from tdxsim.host.faults import FaultSet
from tdxsim.host.l1_image import build_l1_image
from tdxsim.host.vmm import RunResult, RunStatus, Vmm, simulated_platform
from tests.support.processes import descendants, running
from verifier.eventlog import EventType
from verifier.reference import reference_values
from verifier.td_attestation import verify_td_attestation

ROOT = Path(__file__).resolve().parents[3]
RAM = [(0, 32 << 20)]
MAC_KEY, QUOTING = simulated_platform(b"svsm integration")


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project recipe with the L1 image built from this checkout."""
    tmp = tmp_path_factory.mktemp("svsm")
    (tmp / "l1.img").write_bytes(build_l1_image(list(L1_PACKAGES), "svsm.boot:main"))
    write_l2_image(image=tmp / "l2.img", descriptor=tmp / "l2-descriptor.bin")
    recipe = yaml.safe_load(DEFAULT_RECIPE.read_text())
    files = {"l1": "l1.img", "l2": "l2.img", "l2-descriptor": "l2-descriptor.bin"}
    for component in recipe["components"]:
        component["file"] = str(tmp / files[component["name"]])
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


def test_full_boot_in_the_td_process(image: Path) -> None:
    result, mrtd, uart = boot(image)
    assert result.status == RunStatus.DONE, result.detail
    out = json.loads(result.output)
    assert out["num_l2_vms"] == 2  # read with TDG.VM.RD, as the host created the TD
    eks = {kind: bytes.fromhex(der) for kind, der in out["ek_certificates"].items()}
    verdict = verify_td_attestation(
        bytes.fromhex(out["ca_certificate"]),
        eks,
        trusted_root=QUOTING.trusted_root_der,
        expected_mrtd=mrtd,
        later_event_log=bytes.fromhex(out["cc_event_log"]),
    )
    verdict.raise_for_failure()
    assert [step.name for step in verdict.steps] == [
        "quote chain",
        "REPORTDATA binding",
        "MRTD",
        "RTMR replay",
        "later event log",
        "EK certificate (rsa)",
        "EK certificate (ecc)",
    ]
    assert verdict.quote is not None and verdict.quoted_log is not None
    # one vTPM per L2, each with its own EKs and its own CA bound to its own TD quote
    vtpms = out["vtpms"]
    assert [v["vm"] for v in vtpms] == [1, 2]
    assert (vtpms[0]["ca_certificate"], vtpms[0]["ek_certificates"]) == (
        out["ca_certificate"],
        out["ek_certificates"],
    )
    assert vtpms[0]["ek_certificates"]["rsa"] != vtpms[1]["ek_certificates"]["rsa"]
    second = verify_td_attestation(
        bytes.fromhex(vtpms[1]["ca_certificate"]),
        {kind: bytes.fromhex(der) for kind, der in vtpms[1]["ek_certificates"].items()},
        trusted_root=QUOTING.trusted_root_der,
        expected_mrtd=mrtd,
        later_event_log=bytes.fromhex(out["cc_event_log"]),
    )
    second.raise_for_failure()
    assert second.quote is not None and second.quote.body.reportdata != (
        verdict.quote.body.reportdata
    )
    # RTMR0 at quote time: the launch parameters only; separators come after the quote
    quoted = verdict.quoted_log.events
    assert [(e.rtmr, e.event_type) for e in quoted] == [(0, EventType.EV_PLATFORM_CONFIG_FLAGS)]
    assert verdict.quote.body.rtmrs[1:] == (bytes(48),) * 3
    # the relying party's reference values, computed from the image alone, match what L1 measured
    reference = reference_values(image, ram=RAM, vcpus=1, l1_version=SVSM_VERSION)
    assert reference.mrtd == mrtd
    assert reference.rtmrs_at_quote == verdict.quote.body.rtmrs
    assert verdict.later_log is not None
    assert reference.rtmrs_after_boot == verdict.later_log.replay()
    version, firmware = out["pcr_events"]
    l2_image = (image.parent / "l2.img").read_bytes()
    assert bytes.fromhex(version["data"]) == SVSM_VERSION.encode() + b"\0"
    assert bytes.fromhex(firmware["data"]) == l2_image  # the whole image, not its first page
    assert firmware["digests"]["0x000c"] == hashlib.sha384(l2_image).hexdigest()
    for bank, size in (("sha256", 32), ("sha384", 48)):
        value = bytes(size)
        for event in (version, firmware):
            digest = bytes.fromhex(event["digests"][f"{0x000B if size == 32 else 0x000C:#06x}"])
            value = hashlib.new(bank, value + digest).digest()
        assert reference.pcr0[bank] == value  # the relying party's value, from the image alone
    assert out["simulated_quote"] is True
    assert list(out["timings_ms"]) == [  # in the order they started: the workers first
        "3 vTPM manufacture: EKs, CA bound to a TD quote",
        "2 accept memory, NUM_L2_VMS, launch parameters into RTMR0",
        "5 set up 2 L2 guest(s): RAM, paging, aliases, VMCS",
        "4 PCR0: svsm version and L2 image; separators into RTMR0..3",
        "6 run the L2 guests until each exits",
    ]
    assert [(g["vm"], g["exit_code"]) for g in out["l2"]] == [(1, 0), (2, 0)]
    assert "L2[2]| selftest: pass" in uart
    for step in (2, 3, 4, 5, 6):
        assert f"svsm step {step} (" in uart and " done in " in uart


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        (
            "getquote-status=error",
            "vTPM: manufacture: attester 'tdx' failed: GetQuote buffer status at offset 8: "
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
    assert result.status == RunStatus.FAILED
    assert "svsm step 3 (vTPM manufacture: EKs, CA bound to a TD quote) failed: " in result.detail
    assert message in result.detail
    assert "FAILED" in uart  # L1 also said so on its UART
    assert time.monotonic() - start < 30  # bounded: no hang


def test_no_vtpm_worker_outlives_the_td_process(image: Path) -> None:
    with Vmm(QUOTING) as vmm:
        vmm.create(RAM, mac_key=MAC_KEY, num_l2_vms=2)
        vmm.load_igvm(image, RAM)
        vmm.aug_rest()
        vmm.finalize()
        outcome: list[RunResult] = []
        runner = threading.Thread(target=lambda: outcome.append(vmm.run(60)))
        runner.start()
        deadline = time.monotonic() + 30
        workers: list[int] = []  # the launcher and one worker per L2
        while len(workers) < 3 and time.monotonic() < deadline and runner.is_alive():
            workers = [pid for pid in descendants(vmm.proc.pid) if running(pid)]
            time.sleep(0.005)
        assert len(workers) == 3, f"L1 did not start its vTPM workers: {workers}"
        os.kill(vmm.proc.pid, signal.SIGKILL)
        runner.join(30)
        assert outcome and outcome[0].status == RunStatus.DIED
        gone = time.monotonic() + 5
        while any(running(pid) for pid in workers) and time.monotonic() < gone:
            time.sleep(0.01)
        assert not [pid for pid in workers if running(pid)]
