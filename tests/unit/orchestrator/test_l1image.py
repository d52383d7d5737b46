"""The product's L1 image carries bytecode: reproducible, importable, measured to the character."""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from igvm.build import build
from orchestrator.boot import L1_ENTRY, L1_PACKAGES
from orchestrator.l1image import L1ImageSourceError, build_l1_image, zip_bytecode
from tdxsim.host.l1_image import L1Image

ROOT = Path(__file__).resolve().parents[3]
RECIPE = """
platform: {compatibility_mask: 1, highest_vtl: 2, shared_gpa_boundary: 47}
components:
  - {name: l1, kind: paravisor, file: l1.img, gpa: 0x100000}
"""


def members(payload: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def measure(tmp: Path, packages: list[Path]) -> bytes:
    """MRTD of an IGVM holding only the L1 image built from `packages`."""
    (tmp / "l1.img").write_bytes(build_l1_image(packages, L1_ENTRY))
    (tmp / "r.yaml").write_text(RECIPE)
    return build(tmp / "r.yaml", tmp / "r.igvm")


def copy_packages(tmp: Path) -> list[Path]:
    for package in L1_PACKAGES:
        shutil.copytree(package, tmp / package.name, ignore=shutil.ignore_patterns("__pycache__"))
    return [tmp / p.name for p in L1_PACKAGES]


def test_every_module_is_an_unchecked_hash_pyc_of_its_source() -> None:
    files = members(L1Image.unpack(build_l1_image(list(L1_PACKAGES), L1_ENTRY)).payload)
    sources = [p for package in L1_PACKAGES for p in package.rglob("*.py")]
    assert "svsm/boot.pyc" in files and "vtpm/worker.pyc" in files and "tdxdefs/layout.pyc" in files
    assert not [name for name in files if name.endswith(".py")]  # what runs is what is measured
    assert len(files) == len(sources)
    for source in sources:
        pyc = files[source.relative_to(ROOT).as_posix() + "c"]
        assert pyc[:4] == importlib.util.MAGIC_NUMBER
        assert int.from_bytes(pyc[4:8], "little") == 0b01  # hash-based, never checked
        assert pyc[8:16] == importlib.util.source_hash(source.read_bytes())


def test_same_sources_give_the_same_bytes_whatever_the_builder_has_imported() -> None:
    here = build_l1_image(list(L1_PACKAGES), L1_ENTRY)
    code = (
        "import sys, svsm.boot, vtpm.server, vtpm.wire\n"  # a builder with L1 loaded from source
        "from orchestrator.boot import L1_ENTRY, L1_PACKAGES\n"
        "from orchestrator.l1image import build_l1_image\n"
        "sys.stdout.buffer.write(build_l1_image(list(L1_PACKAGES), L1_ENTRY))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=True, timeout=120
    ).stdout
    assert here == there


def test_one_character_in_a_comment_changes_mrtd(tmp_path: Path) -> None:
    packages = copy_packages(tmp_path / "src")
    before = measure(tmp_path, packages)
    assert measure(tmp_path, packages) == before
    target = tmp_path / "src" / "svsm" / "crb.py"
    text = target.read_text()
    at = text.index("#")  # a comment: the bytecode proper does not change, the source hash does
    target.write_text(text[: at + 1] + ("x" if text[at + 1] != "x" else "y") + text[at + 2 :])
    assert measure(tmp_path, packages) != before


def test_the_image_imports_without_its_sources(tmp_path: Path) -> None:
    zip_path = tmp_path / "l1.zip"
    zip_path.write_bytes(zip_bytecode([ROOT / "tdxdefs"]))
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import tdxdefs.layout, tdxdefs.tdcall\n"
        "print(tdxdefs.layout.__file__); print(tdxdefs.tdcall.Leaf.VP_ENTER.name)"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(zip_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    origin, leaf = done.stdout.split()
    assert origin == f"{zip_path}/tdxdefs/layout.pyc" and leaf == "VP_ENTER"


def test_a_source_that_does_not_compile_is_named(tmp_path: Path) -> None:
    package = tmp_path / "broken"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "bad.py").write_text("def f(:\n")
    with pytest.raises(L1ImageSourceError, match=r"broken/bad\.py does not compile"):
        zip_bytecode([package])


def test_a_directory_that_is_no_package_is_named(tmp_path: Path) -> None:
    with pytest.raises(L1ImageSourceError, match=r"no __init__\.py"):
        zip_bytecode([tmp_path])
