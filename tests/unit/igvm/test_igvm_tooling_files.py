"""IGVM files from another generator (Microsoft's igvm-tooling): check, dump and measure.

The files (public test data kept beside the repository, tests/data/igvm-tooling/PROVENANCE.md)
are SEV-SNP layouts whose VP_CONTEXT header padding holds non-zero bytes, which loaders accept
and `check --strict` reports. The MRTD comparison uses a walk written here from the IGVM
specification alone (fixed header, TLV entries, PAGE_DATA and PARAMETER_INSERT) and the TDX
measurement of the Intel TDX Module ABI Specification (TDH.MEM.PAGE.ADD and TDH.MR.EXTEND
extension blocks), so it shares no code with igvm.measure.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
from pathlib import Path

import pytest

from igvm.cli import main
from tests.support.public_data import public_dirs, require

DATA = public_dirs("igvm-tooling")[0]
FILES = sorted(DATA.glob("*.igvm"))
SNP_MASK = 1
GENERATED = ("bzimage-x64.igvm", "bzimage-x86-vtl2.igvm", "bzimage2-shared.igvm")

# The generator's dump: NAME(offset){ Field:value ... } per header; a VP_CONTEXT is printed
# twice (the second time followed by its VMSA), so entries are keyed by offset.
TOOL_LINE = re.compile(r"^IGVM_VHT_(\w+)\(([0-9a-f]+)\)\{(.*)")
TOOL_FIXED = re.compile(r"^\{ (.*) \}$")
TOOL_FIELD = re.compile(r"(\w+):(0x[0-9a-f]+)")
TOOL_NAMES = {"SNP_POLICY": "GUEST_POLICY"}  # 0x101, named GUEST_POLICY by the specification
TOOL_FIELDS = {
    "GPA": "gpa",
    "CompatibilityMask": "compatibility_mask",
    "Flags": "flags",
    "DataType": "data_type",
    "HighestVtl": "highest_vtl",
    "PlatformType": "platform_type",
    "PlatformVersion": "platform_version",
    "SharedGPABoundary": "shared_gpa_boundary",
    "Policy": "policy",
    "NumberOfBytes": "number_of_bytes",
    "ParameterAreaIndex": "parameter_area_index",
    "ByteOffset": "byte_offset",
    "VpIndex": "vp_index",
}
TOOL_FIXED_FIELDS = {
    "FormatVersion": "format_version",
    "VariableHeaderOffset": "variable_header_offset",
    "VariableHeaderSize": "variable_header_size",
    "TotalFileSize": "total_file_size",
}


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


def test_the_generated_files_are_present() -> None:
    require("igvm-tooling", *GENERATED)
    assert len(FILES) == 3, FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_check_accepts_and_strict_reports_the_padding(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = run("check", str(path))
    assert code == 0 and text.startswith(f"{path}: valid IGVM (")
    capsys.readouterr()
    code, text = run("check", "--strict", str(path))
    err = capsys.readouterr().err
    assert code == 1 and "not strictly" in text
    assert "finding: padding after a header payload is not zero (once; first at header" in err


def _tool_dump(path: Path) -> tuple[dict[str, int], list[tuple[str, dict[str, int]]]]:
    lines = path.with_suffix(".tool-dump.txt").read_text().splitlines()
    fixed_match = TOOL_FIXED.match(lines[0])
    assert fixed_match is not None
    fixed = {name: int(value, 16) for name, value in TOOL_FIELD.findall(fixed_match.group(1))}
    headers: dict[int, tuple[str, dict[str, int]]] = {}
    for line in lines[1:]:
        match = TOOL_LINE.match(line)
        if match is None:
            continue
        name, offset, body = match.groups()
        fields = {key: int(value, 16) for key, value in TOOL_FIELD.findall(body)}
        headers.setdefault(int(offset, 16), (TOOL_NAMES.get(name, name), fields))
    return fixed, [headers[offset] for offset in sorted(headers)]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dump_matches_the_generators_own_dump(path: Path) -> None:
    code, text = run("dump", "--json", str(path))
    assert code == 0
    ours = json.loads(text)
    tool_fixed, tool_headers = _tool_dump(path)
    for tool_name, our_name in TOOL_FIXED_FIELDS.items():
        assert ours[our_name] == tool_fixed[tool_name], tool_name
    assert int(ours["checksum"], 16) == tool_fixed["Checksum"]
    assert len(ours["headers"]) == len(tool_headers)
    compared = 0
    for number, (header, (tool_name, fields)) in enumerate(
        zip(ours["headers"], tool_headers, strict=True)
    ):
        assert header["type"] == tool_name, number
        for tool_field, our_field in TOOL_FIELDS.items():
            if tool_field in fields:
                assert header[our_field] == fields[tool_field], (number, tool_field)
                compared += 1
    assert compared > 3 * len(tool_headers)  # a PAGE_DATA alone contributes four fields


def _independent_mrtd(raw: bytes, mask: int) -> bytes:
    """TDX MRTD of an IGVM file, from the specifications only (see the module docstring)."""
    _magic, _version, vh_offset, vh_size = struct.unpack_from("<IIII", raw, 0)
    digest = hashlib.sha384()

    def block(tag: bytes, gpa: int) -> bytes:
        return tag.ljust(16, b"\0") + struct.pack("<Q", gpa) + bytes(104)

    areas: dict[int, int] = {}
    offset = vh_offset
    while offset < vh_offset + vh_size:
        header_type, length = struct.unpack_from("<II", raw, offset)
        body = raw[offset + 8 : offset + 8 + length]
        if header_type == 0x301:  # PARAMETER_AREA: number_of_bytes, index
            size, index = struct.unpack_from("<QI", body)
            areas[index] = size
        elif header_type == 0x302:  # PAGE_DATA
            gpa, page_mask, file_offset, flags = struct.unpack_from("<QIII", body)
            shared, unmeasured = flags & 0x4, flags & 0x2
            if page_mask & mask == mask and not shared:
                digest.update(block(b"MEM.PAGE.ADD", gpa))
                if not unmeasured:
                    page = raw[file_offset : file_offset + 4096] if file_offset else b""
                    page = page.ljust(4096, b"\0")
                    for chunk in range(16):
                        digest.update(block(b"MR.EXTEND", gpa + chunk * 256))
                        digest.update(page[chunk * 256 : (chunk + 1) * 256])
        elif header_type == 0x303:  # PARAMETER_INSERT: every page PAGE.ADD only
            gpa, insert_mask, index = struct.unpack_from("<QII", body)
            if insert_mask & mask == mask:
                for page_offset in range(0, areas[index], 4096):
                    digest.update(block(b"MEM.PAGE.ADD", gpa + page_offset))
        offset += (8 + length + 7) // 8 * 8
    return digest.digest()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_measure_matches_an_independent_tdx_measurement(path: Path) -> None:
    code, text = run("measure", "--mask", str(SNP_MASK), str(path))
    assert code == 0
    assert text.strip() == _independent_mrtd(path.read_bytes(), SNP_MASK).hex()
    # and the measurement is of something: it is not the SHA-384 of no input
    assert text.strip() != hashlib.sha384().hexdigest()


def test_measure_without_a_tdx_platform_or_with_an_absent_mask_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = require("igvm-tooling", GENERATED[0]) / GENERATED[0]
    assert run("measure", str(path))[0] == 1
    assert "no TDX SUPPORTED_PLATFORM" in capsys.readouterr().err
    assert run("measure", "--mask", "2", str(path)) == (1, "")
    assert "no SUPPORTED_PLATFORM has compatibility mask 0x2" in capsys.readouterr().err
