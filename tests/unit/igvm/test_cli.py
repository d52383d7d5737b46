"""The igvm command line: each subcommand's output and exit status."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from igvm.cli import main
from igvm.format import IgvmFile
from igvm.headers import IGVM_PAGE_FLAG_UNMEASURED, PageData
from tests.support.igvm_files import V4_MRTD, tdx_platform, v4_image

ROOT = Path(__file__).resolve().parents[3]


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out)
    return code, out.getvalue()


@pytest.fixture
def v4_path(tmp_path: Path) -> Path:
    path = tmp_path / "sample_tdx.igvm"
    path.write_bytes(v4_image().to_bytes())
    return path


def test_measure_prints_96_hex_digits(v4_path: Path) -> None:
    assert run("measure", str(v4_path)) == (0, V4_MRTD + "\n")
    code, text = run("measure", str(v4_path), "--json", "--mask", "1")
    assert code == 0 and json.loads(text)["mrtd"] == V4_MRTD
    code, text = run("measure", str(v4_path), "--variant", "td-shim")
    assert code == 0 and len(text.strip()) == 96 and text.strip() != V4_MRTD


def test_measure_help_explains_the_td_shim_variant(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    text = capsys.readouterr().out
    assert "td-shim" in text and "zero page" in text and "masks are ignored" in text


def test_dump_human_and_json(v4_path: Path) -> None:
    code, text = run("dump", str(v4_path))
    assert code == 0 and "CRC-32 0x98517194" in text and "(TDX)" in text
    assert "#6: PARAMETER_INSERT gpa=0x4000" in text
    code, text = run("dump", "--json", str(v4_path))
    doc = json.loads(text)
    assert doc["checksum"] == "0x98517194" and len(doc["headers"]) == 7
    assert doc["headers"][2]["type"] == "PAGE_DATA" and doc["headers"][2]["gpa"] == 0x1000


def test_check_reports_the_broken_rule(
    v4_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("check", str(v4_path)) == (0, f"{v4_path}: valid IGVM (7 headers)\n")
    broken = tmp_path / "broken.igvm"
    raw = bytearray(v4_path.read_bytes())
    raw[30] ^= 0xFF  # inside the platform header: CRC no longer matches
    broken.write_bytes(bytes(raw))
    assert run("check", str(broken))[0] == 1
    err = capsys.readouterr().err
    assert "checksum" in err and "file offset 0x14" in err
    assert run("check", str(tmp_path / "missing.igvm"))[0] == 1


def test_build_prints_mrtd(tmp_path: Path) -> None:
    out = tmp_path / "image.igvm"
    code, text = run("build", str(ROOT / "igvm/recipes/test-image.yaml"), "-o", str(out))
    assert code == 0 and out.exists()
    assert text.splitlines()[-1] == "MRTD " + run("measure", str(out))[1].strip()


def test_build_reports_recipe_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("components: [{name: a, kind: blob, gpa: 0x10, size: 1}]\n")
    assert run("build", str(recipe), "-o", str(tmp_path / "o"))[0] == 1
    assert "components[0].gpa" in capsys.readouterr().err


def test_diff_names_differing_directives_and_mrtd_effect(v4_path: Path, tmp_path: Path) -> None:
    changed = v4_image()
    changed.directives[3] = PageData(0x2000, 1, IGVM_PAGE_FLAG_UNMEASURED, data=b"new")
    other = tmp_path / "other.igvm"
    other.write_bytes(changed.to_bytes())
    code, text = run("diff", str(v4_path), str(other))
    assert code == 1
    assert "- A #4 [changed] PAGE_DATA gpa=0x2000" in text
    assert "+ B #4 [changed] PAGE_DATA gpa=0x2000" in text
    # An unmeasured page's contents do not reach MRTD: the diff says so.
    assert "MRTD matches" in text
    reordered = v4_image()
    reordered.directives[1], reordered.directives[2] = (
        reordered.directives[2],
        reordered.directives[1],
    )
    third = tmp_path / "third.igvm"
    third.write_bytes(reordered.to_bytes())
    code, text = run("diff", str(v4_path), str(third))
    assert code == 1 and "diverges at measured step 0" in text and "MRTD differs" in text
    assert run("diff", str(v4_path), str(v4_path))[1].endswith(
        "directives are identical\nMRTD matches\n"
    )


def test_diff_of_a_longer_file_names_the_extra_directive(tmp_path: Path) -> None:
    base = v4_image()
    longer = v4_image()
    longer.directives.append(PageData(0x7000, 1, data=b"extra"))
    a, b = tmp_path / "a.igvm", tmp_path / "b.igvm"
    a.write_bytes(base.to_bytes())
    b.write_bytes(longer.to_bytes())
    code, text = run("diff", str(a), str(b))
    assert code == 1 and "+ B #7 [only in B] PAGE_DATA gpa=0x7000" in text
    assert "MRTD input diverges after 4 measured steps" in text


def test_python_dash_m_igvm_runs(v4_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "igvm", "measure", str(v4_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == V4_MRTD


def test_measure_file_without_tdx_platform_fails_cleanly(tmp_path: Path) -> None:
    from igvm.headers import IGVM_PLATFORM_SEV_SNP, SupportedPlatform

    path = tmp_path / "snp.igvm"
    path.write_bytes(
        IgvmFile(
            [SupportedPlatform(1, 0, IGVM_PLATFORM_SEV_SNP, 1, 0)], [], [PageData(0, 1)]
        ).to_bytes()
    )
    assert run("measure", str(path))[0] == 1
    assert run("measure", str(path), "--mask", "1")[0] == 0
    assert tdx_platform().compatibility_mask == 1
