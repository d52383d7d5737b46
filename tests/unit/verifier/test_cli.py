"""`python -m verifier eventlog|reference`: what a relying party types, and the exit status."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from igvm.build import build
from igvm.measure import mrtd
from tests.support.public_data import require
from verifier.cli import main

from .conftest import TdEvidence

ROOT = Path(__file__).resolve().parents[3]
TEST_RECIPE = ROOT / "igvm" / "recipes" / "test-image.yaml"
EVENT_16_DIGEST = 1732 + 12 + 2  # record 16 of the public sample extends RTMR2


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(list(argv), out)
    return status, out.getvalue()


def test_help_names_both_commands_and_the_exit_status() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "verifier", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0
    assert "eventlog" in result.stdout and "reference" in result.stdout
    assert "Exit status: 0" in result.stdout
    sub = subprocess.run(
        [sys.executable, "-m", "verifier", "eventlog", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "MR index = RTMR + 1" in " ".join(sub.stdout.split()) and "--quote" in sub.stdout


@pytest.fixture
def ccel() -> Path:
    """The public CCEL sample and its quote (tests/data/ccel/PROVENANCE.md)."""
    return require("ccel", "ccel_data.bin", "td_quote_v4.dat")


def test_the_public_log_matches_its_quote(ccel: Path) -> None:
    status, out = run(
        "eventlog", str(ccel / "ccel_data.bin"), "--quote", str(ccel / "td_quote_v4.dat")
    )
    assert status == 0, out
    assert "20 events in 2120 bytes (63416 bytes of fill after them); digests: SHA384" in out
    assert out.count("matches the quote") == 4
    assert "  16    1732   3  EV_EVENT_TAG" in out


def test_a_changed_event_exits_1_naming_the_rtmr(ccel: Path, tmp_path: Path) -> None:
    changed = bytearray((ccel / "ccel_data.bin").read_bytes())
    changed[EVENT_16_DIGEST] ^= 0xFF
    log = tmp_path / "ccel"
    log.write_bytes(bytes(changed))
    status, out = run("eventlog", str(log), "--quote", str(ccel / "td_quote_v4.dat"))
    assert status == 1
    assert "RTMR2 mismatch: the log replays to " in out
    assert out.count("matches the quote") == 3
    status, out = run("eventlog", str(log), "--quote", str(ccel / "td_quote_v4.dat"), "--json")
    result = json.loads(out)
    assert status == 1 and result["mismatched_rtmrs"] == [2] and result["ok"] is False
    assert len(result["events"]) == 20 and result["events"][16]["rtmr"] == 2


def test_the_log_in_a_ca_certificate_is_read_from_pem_and_der(
    tmp_path: Path, evidence: TdEvidence
) -> None:
    cert = x509.load_der_x509_certificate(evidence.ca_der)
    for name, data in (("ca.der", evidence.ca_der), ("ca.pem", cert.public_bytes(Encoding.PEM))):
        path = tmp_path / name
        path.write_bytes(data)
        quote = tmp_path / "quote"
        quote.write_bytes(evidence.quote)
        status, out = run("eventlog", str(path), "--quote", str(quote), "--json")
        result = json.loads(out)
        assert status == 0 and result["ok"] is True
        assert result["source"] == "the event-log extension of 'CN=test vTPM CA'"
        assert [e["type_name"] for e in result["events"]] == ["EV_PLATFORM_CONFIG_FLAGS"]


def test_a_malformed_log_exits_1_naming_the_offset(
    ccel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "short"
    log.write_bytes((ccel / "ccel_data.bin").read_bytes()[:1000])
    status, _out = run("eventlog", str(log))
    assert status == 1
    # record 9 starts at 972: its SHA-384 digest (at 972 + 14) is cut after 14 bytes
    assert (
        "verifier eventlog: CC event log offset 986: digest (0x000c): needs 48 bytes, 14 left"
        in (capsys.readouterr().err)
    )


@pytest.mark.parametrize(
    ("version", "named"),
    [
        (6, "header.version at offset 0: 6"),  # no such quote version
        (5, "body_descriptor.body_type at offset 48"),  # a v4 body under a v5 header
    ],
)
def test_a_relabelled_quote_is_refused_by_field_and_offset(
    ccel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], version: int, named: str
) -> None:
    quote = bytearray((ccel / "td_quote_v4.dat").read_bytes())
    quote[0:2] = struct.pack("<H", version)
    path = tmp_path / f"q{version}"
    path.write_bytes(bytes(quote))
    status, _ = run("eventlog", str(ccel / "ccel_data.bin"), "--quote", str(path))
    assert status == 1 and named in capsys.readouterr().err


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "test.igvm"
    build(TEST_RECIPE, path)
    return path


def launch_area(vcpus: int, ram: list[tuple[int, int]]) -> bytes:
    """The test image's parameter area as a host fills it: VP count at 0, memory map at 0x100
    (IGVM_VHS_MEMORY_MAP_ENTRY: start page u64, page count u64, type u16, flags u16, reserved)."""
    area = bytearray(0x1000)
    area[0:4] = struct.pack("<I", vcpus)
    entries = b"".join(struct.pack("<QQHHI", gpa >> 12, size >> 12, 0, 0, 0) for gpa, size in ram)
    area[0x100 : 0x100 + len(entries)] = entries  # a zero entry terminates the map
    return bytes(area)


def test_reference_values_of_an_image(image: Path) -> None:
    status, out = run("reference", str(image), "--json", "--l1-version", "tdp-svsm 0.1.0")
    assert status == 0
    values = json.loads(out)
    assert values["mrtd"] == mrtd(image).hex()
    launch = hashlib.sha384(launch_area(1, [(0, 32 << 20), (0xFED40000, 0x1000)])).digest()
    assert values["launch_event_sha384"] == launch.hex()
    rtmr0 = hashlib.sha384(bytes(48) + launch).digest()
    assert values["rtmrs_at_quote"] == [rtmr0.hex()] + [bytes(48).hex()] * 3
    seal = hashlib.sha384(bytes(4)).digest()
    after = [hashlib.sha384(v + seal).digest().hex() for v in (rtmr0, *[bytes(48)] * 3)]
    assert values["rtmrs_after_boot"] == after
    version = b"tdp-svsm 0.1.0\0"
    assert values["pcr0"] == {
        "sha256": hashlib.sha256(bytes(32) + hashlib.sha256(version).digest()).hexdigest(),
        "sha384": hashlib.sha384(bytes(48) + hashlib.sha384(version).digest()).hexdigest(),
    }


def test_reference_rtmr0_follows_the_launch_parameters(image: Path) -> None:
    args = ("reference", str(image), "--json", "--vcpus", "2", "--ram", "0:0x1000000")
    args += ("--ram", "0x100000000:0x40000000")
    status, out = run(*args)
    launch = launch_area(2, [(0, 16 << 20), (1 << 32, 1 << 30)])
    assert status == 0
    assert json.loads(out)["launch_event_sha384"] == hashlib.sha384(launch).hexdigest()
    assert json.loads(out)["pcr0"] == {}
    assert json.loads(out)["pcr4"] == {}  # the test image boots no L2 firmware
    status, text = run("reference", str(image))
    assert "note: PCR0 not computed: the image carries no L1 version record" in text
    assert f"MRTD              {mrtd(image).hex()}" in text


def test_reference_of_a_file_that_is_no_image_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.igvm"
    path.write_bytes(b"not an image")
    assert run("reference", str(path))[0] == 1
    assert capsys.readouterr().err.startswith("verifier reference: ")


def ccel_table(laml: int, cc_type: int = 2) -> bytes:
    """An ACPI CCEL table (ACPI 6.5, 5.2.34) written by hand, with a correct checksum."""
    header = struct.pack("<4sIBB6s8sI4sI", b"CCEL", 56, 1, 0, b"OEMID ", b"TABLE ID", 1, b"TEST", 1)
    table = bytearray(header + struct.pack("<BBHQQ", cc_type, 0, 0, laml, 0x7F000000))
    table[9] = (-sum(table)) % 256
    return bytes(table)


def test_the_ccel_table_bounds_the_log_area(
    ccel: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = tmp_path / "CCEL"
    table.write_bytes(ccel_table(4096))
    log = str(ccel / "ccel_data.bin")
    status, out = run("eventlog", log, "--table", str(table))
    assert status == 0
    assert "CCEL table, CC type 2 (TDX), log area 4096 bytes at 0x7f000000" in out
    assert "20 events in 2120 bytes (1976 bytes of fill after them)" in out
    table.write_bytes(ccel_table(1 << 20))
    assert run("eventlog", log, "--table", str(table))[0] == 1
    assert "CCEL table offset 40: log area length 1048576, the log data has 65536" in (
        capsys.readouterr().err
    )
    broken = bytearray(ccel_table(4096))
    broken[20] ^= 1
    table.write_bytes(bytes(broken))
    assert run("eventlog", log, "--table", str(table))[0] == 1
    assert "CCEL table offset 9: checksum" in capsys.readouterr().err
