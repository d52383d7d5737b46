"""The TD in its own process: L1 boots from the measured image, the host serves it over the channel,
and a dead TD process is reported, not waited for."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from igvm import measure
from igvm.format import IgvmFile
from igvm.headers import PageData, SupportedPlatform
from igvm.writer import write
from tdxdefs.tdcall import PAGE_SIZE, TDX_L2_EXIT_HOST_ROUTED_ASYNC
from tdxdefs.vmcs import ExitReason
from tdxsim.host.faults import FaultSet
from tdxsim.host.l1_image import HEADER_SIZE, build_l1_image
from tdxsim.host.services import DEFAULT_STORM_VECTOR
from tdxsim.host.vmm import CHECKOUT, HostCallRefused, RunResult, RunStatus, Vmm, simulated_platform
from tdxsim.module.host_interface import TdExitKind
from verifier.quote import verify_quote

L1_MIN = Path(__file__).parent / "l1_min"
IMAGE_GPA = 0x100000
RAM = [(0, 8 << 20)]
PLATFORM_TDX = 3
SEED = b"test_tdprocess"
MAC_KEY, QUOTING = simulated_platform(SEED)


def image(entry: str = "l1_min.main:entry", source: Path = L1_MIN) -> bytes:
    return build_l1_image([source], entry)


def igvm_file(l1_image: bytes, path: Path) -> Path:
    """An IGVM file for TDX carrying the L1 image as measured pages at IMAGE_GPA."""
    pages = [
        PageData(
            gpa=IMAGE_GPA + off,
            compatibility_mask=1,
            data=l1_image[off : off + PAGE_SIZE].ljust(PAGE_SIZE, b"\0"),
        )
        for off in range(0, len(l1_image), PAGE_SIZE)
    ]
    platform = SupportedPlatform(
        compatibility_mask=1, highest_vtl=0, platform_type=PLATFORM_TDX, shared_gpa_boundary=1 << 47
    )
    write(IgvmFile(platforms=[platform], directives=list(pages)), path)
    return path


@pytest.fixture
def vmm() -> Iterator[Vmm]:
    with Vmm(QUOTING) as v:
        v.create(RAM, mac_key=MAC_KEY)
        yield v


def boot(vmm: Vmm, l1_image: bytes, timeout: float = 30.0) -> RunResult:
    vmm.load_l1_image(l1_image, IMAGE_GPA)
    vmm.aug_rest()
    vmm.finalize()
    return vmm.run(timeout)


def test_l1_boots_from_the_measured_igvm_and_gets_a_quote(vmm: Vmm, tmp_path: Path) -> None:
    path = igvm_file(image(), tmp_path / "l1.igvm")
    vmm.load_igvm(path, RAM)
    vmm.aug_rest()
    mrtd = vmm.finalize()
    assert mrtd == measure.mrtd(path)  # the TD's MRTD is what the offline prediction says
    result = vmm.run(30)
    assert result.status == RunStatus.DONE, result.detail
    out = json.loads(result.output)
    assert out["marker"] == "l1-min-A"
    # L1 was imported from the image's zip, not from the checkout, and the checkout is not on
    # its path (only the stdlib, the image and third-party site-packages)
    assert out["module_file"] == out["image_path"] + "/l1_min/main.py"
    assert out["checkout_reachable"] == []  # vtpm, svsm, tests, tasks.py: none importable
    assert not any(Path(p).resolve() == CHECKOUT for p in out["sys_path"] if Path(p).exists())
    assert all(not p.startswith(str(CHECKOUT)) or ".venv" in p for p in out["sys_path"])
    quote = verify_quote(bytes.fromhex(out["quote"]), QUOTING.trusted_root_der)
    assert quote.body.mrtd == mrtd
    assert quote.body.reportdata.hex() == out["report_data"]
    marker_digest = hashlib.sha384(b"l1-min-A").digest()
    assert quote.body.rtmr2 == hashlib.sha384(bytes(48) + marker_digest).digest()
    assert bytes(vmm.host.uart.output) == b"l1-min-A booted\n"  # type: ignore[union-attr]
    assert result.exits > len("l1-min-A booted\n")  # every TDVMCALL was one TD exit
    vmm.close()
    assert vmm.proc.returncode == 0  # the TD process ended cleanly on SHUTDOWN


def test_one_changed_byte_changes_mrtd_and_is_what_runs(tmp_path: Path) -> None:
    changed = tmp_path / "l1_min"
    shutil.copytree(L1_MIN, changed, ignore=shutil.ignore_patterns("__pycache__"))
    main = changed / "main.py"
    main.write_bytes(main.read_bytes().replace(b'MARKER = "l1-min-A"', b'MARKER = "l1-min-B"'))
    results = {}
    for name, source in (("A", L1_MIN), ("B", changed)):
        with Vmm(QUOTING) as v:
            v.create(RAM, mac_key=MAC_KEY)
            result = boot(v, image(source=source))
            assert result.status == RunStatus.DONE, result.detail
            results[name] = (v.mrtd, json.loads(result.output)["marker"])
    assert results["A"][0] != results["B"][0]
    assert results["A"][1] == "l1-min-A" and results["B"][1] == "l1-min-B"


def _defs_image(defs: Path, tmp_path: Path) -> bytes:
    """An image of l1_min plus a copy of `defs` (a tdxdefs tree) under the name tdxdefs."""
    copy = tmp_path / "tdxdefs"
    if defs != copy:
        shutil.copytree(defs, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return build_l1_image([L1_MIN, copy], "l1_min.main:definitions")


def test_l1_imports_tdxdefs_from_the_image_and_a_changed_byte_changes_mrtd(
    tmp_path: Path,
) -> None:
    runs = {}
    for name in ("A", "B"):
        work = tmp_path / name
        work.mkdir()
        shutil.copytree(
            CHECKOUT / "tdxdefs", work / "tdxdefs", ignore=shutil.ignore_patterns("__pycache__")
        )
        if name == "B":  # one byte of the definitions' docstring
            init = work / "tdxdefs" / "__init__.py"
            init.write_bytes(init.read_bytes().replace(b"TDX architecture", b"TDX Architecture", 1))
        with Vmm(QUOTING) as v:
            v.create(RAM, mac_key=MAC_KEY)
            result = boot(v, _defs_image(work / "tdxdefs", work))
            assert result.status == "done", result.detail
            out = json.loads(result.output)
            assert out["file"] == out["image_path"] + "/tdxdefs/__init__.py"  # not the checkout's
            assert out["vp_enter"] == 25
            runs[name] = (v.mrtd, out["doc_sha256"])
    assert runs["A"][0] != runs["B"][0]  # MRTD covers the definitions
    assert runs["A"][1] != runs["B"][1]  # and the changed copy is the one L1 ran


def test_l1_without_tdxdefs_in_its_image_cannot_import_the_model_copy(vmm: Vmm) -> None:
    result = boot(vmm, image("l1_min.main:definitions"))
    assert result.status == "failed"
    assert "No module named 'tdxdefs'" in result.detail, result.detail


def test_unmeasured_image_pages_are_refused_at_finalize(vmm: Vmm) -> None:
    l1_image = image()
    vmm.add_page(IMAGE_GPA, l1_image[:PAGE_SIZE], measure=False)
    for off in range(PAGE_SIZE, len(l1_image), PAGE_SIZE):
        vmm.add_page(IMAGE_GPA + off, l1_image[off : off + PAGE_SIZE])
    vmm.l1_location = (IMAGE_GPA, len(l1_image))
    with pytest.raises(HostCallRefused, match=f"{IMAGE_GPA:#x} is not fully measured"):
        vmm.finalize()
    assert vmm.run(5).status == RunStatus.FAILED  # L1 never runs


def test_a_tampered_image_header_is_refused_naming_the_field(vmm: Vmm) -> None:
    l1_image = bytearray(image())
    l1_image[HEADER_SIZE + 10] ^= 1  # a payload byte: the SHA-384 in the header no longer fits
    vmm.load_l1_image(bytes(l1_image), IMAGE_GPA)
    with pytest.raises(HostCallRefused, match="payload_sha384 at offset 88"):
        vmm.finalize()


def test_host_side_calls_with_bad_gpas_are_refused(vmm: Vmm) -> None:
    with pytest.raises(HostCallRefused, match="0x123"):
        vmm.add_page(0x123, b"x")
    with pytest.raises(HostCallRefused, match="outside the TD's RAM"):
        vmm.add_page(0x4000000, b"x")


def test_l1_exception_is_reported_as_failed(vmm: Vmm) -> None:
    result = boot(vmm, image("l1_min.main:fail"))
    assert result.status == RunStatus.FAILED
    assert "l1_min gives up on purpose" in result.detail


def test_report_fatal_error_ends_the_run_with_the_message(vmm: Vmm) -> None:
    result = boot(vmm, image("l1_min.main:fatal"))
    assert result.status == RunStatus.FATAL
    assert result.output == b"l1_min: fatal on purpose" and "0x51" in result.detail
    assert vmm.proc.poll() is not None  # the host killed the TD; it was not resumed


def test_l2_exits_and_host_tdvmcalls_from_l1_in_the_td_process(vmm: Vmm) -> None:
    result = boot(vmm, image("l1_min.l2loop:quick"))
    assert result.status == RunStatus.DONE, result.detail
    samples = json.loads(result.output)
    assert len(samples["l2_exit_ns"]) == len(samples["tdvmcall_ns"]) == 20
    assert result.exits >= 20  # each HLT TDVMCALL reached the host process; L2 exits did not


def test_getquote_fault_reaches_l1_across_processes() -> None:
    with Vmm(QUOTING, FaultSet.parse("getquote-status=error")) as v:
        v.create(RAM, mac_key=MAC_KEY)
        result = boot(v, image())
    assert result.status == RunStatus.FAILED
    assert "GetQuote status 0x8000000000000000" in result.detail


def test_mapgpa_retry_forever_is_bounded_by_l1() -> None:
    with Vmm(QUOTING, FaultSet.parse("mapgpa-retry=always")) as v:
        v.create(RAM, mac_key=MAC_KEY)
        result = boot(v, image())
    assert result.status == RunStatus.FAILED and "MapGPA kept asking to retry" in result.detail


def test_killed_td_process_is_reported_within_a_second(vmm: Vmm) -> None:
    killed_at: list[float] = []

    def kill() -> None:
        time.sleep(0.3)
        killed_at.append(time.monotonic())
        os.kill(vmm.proc.pid, signal.SIGKILL)

    threading.Thread(target=kill, daemon=True).start()
    result = boot(vmm, image("l1_min.main:spin"), timeout=20)
    assert result.status == RunStatus.DIED
    assert time.monotonic() - killed_at[0] < 1.0
    assert str(vmm.proc.pid) in result.detail and "-9" in result.detail


def test_a_td_that_never_ends_is_stopped_at_the_deadline(vmm: Vmm) -> None:
    start = time.monotonic()
    result = boot(vmm, image("l1_min.main:spin"), timeout=1.0)
    assert result.status == RunStatus.TIMEOUT
    assert time.monotonic() - start < 4.0
    assert vmm.proc.poll() is not None


def test_td_process_killed_before_create_is_reported() -> None:
    with Vmm(QUOTING) as v:
        v.proc.kill()
        v.proc.wait(5)
        with pytest.raises(RuntimeError, match="TD process"):
            v.create(RAM, mac_key=MAC_KEY)


def test_notification_interrupt_reaches_l1_in_the_td_process(vmm: Vmm) -> None:
    result = boot(vmm, image())
    assert result.status == RunStatus.DONE, result.detail
    assert json.loads(result.output)["interrupts"] == [0x40]  # posted when the quote was ready
    assert list(vmm.host.log.injected) == [(0, 0x40)]  # type: ignore[union-attr]


def test_irq_storm_reaches_l1_in_the_td_process() -> None:
    with Vmm(QUOTING, FaultSet.parse("irq-storm=5")) as v:
        v.create(RAM, mac_key=MAC_KEY)
        result = boot(v, image())
    assert result.status == RunStatus.DONE, result.detail
    seen = json.loads(result.output)["interrupts"]
    assert seen.count(DEFAULT_STORM_VECTOR) + seen.count(0x40) >= 5


def test_accept_of_a_missing_page_is_fixed_by_the_host_process(vmm: Vmm) -> None:
    vmm.load_l1_image(image("l1_min.main:accept4k"), IMAGE_GPA)
    vmm.finalize()  # no AUG: only the image pages exist
    result = vmm.run(30)
    assert result.status == RunStatus.DONE and result.output == b"0x0"
    assert [e.kind for e in vmm.host.log.exits] == [TdExitKind.EPT_VIOLATION]  # type: ignore[union-attr]


def test_host_routed_l2_exit_is_seen_by_the_host_and_l1_resumed(vmm: Vmm) -> None:
    result = boot(vmm, image("l1_min.l2loop:host_routed"))
    assert result.status == RunStatus.DONE, result.detail
    out = json.loads(result.output)
    assert out["rax"] == TDX_L2_EXIT_HOST_ROUTED_ASYNC | ExitReason.EPT_VIOLATION
    assert out["gpa"] == (1 << 47) | 0x700000
    exits = vmm.host.log.exits  # type: ignore[union-attr]
    routed = [(e.gpa, e.vm) for e in exits if e.kind == TdExitKind.L2_HOST_ROUTED]
    assert routed == [((1 << 47) | 0x700000, 1)]


def test_td_process_ends_when_the_host_goes_away(vmm: Vmm) -> None:
    vmm.load_l1_image(image("l1_min.main:spin"), IMAGE_GPA)
    vmm.aug_rest()
    vmm.finalize()
    vmm.channel.send_enter(None)
    vmm.recv(time.monotonic() + 10)  # L1 is running: its first HLT TDVMCALL
    vmm.channel.close()  # the host vanishes mid-TDVMCALL
    assert vmm.proc.wait(1.0) == 0  # no orphan TD process keeps L1 running


def test_every_image_byte_is_measured(tmp_path: Path) -> None:
    original = image()
    base = measure.mrtd(igvm_file(original, tmp_path / "a.igvm"))
    for offset in (0, HEADER_SIZE + 7, len(original) - 1):  # header, payload start, last byte
        flipped = bytearray(original)
        flipped[offset] ^= 0x01
        assert measure.mrtd(igvm_file(bytes(flipped), tmp_path / f"{offset}.igvm")) != base
