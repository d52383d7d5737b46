"""Hostile inputs to the igvm command line, each run in a child bounded in time and memory.

Every command runs as `python -m igvm` under RLIMIT_AS (as `ulimit -v` sets) and a timeout, so
an input that made a command run unbounded fails the test instead of the machine. Each case names
the error a user sees; none may print a Python traceback.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from igvm.headers import IGVM_PLATFORM_TDX, SupportedPlatform
from tests.support.igvm_files import assemble, platform_entry, tlv, v4_image

ROOT = Path(__file__).resolve().parents[3]
MEMORY_LIMIT = 768 << 20  # address space of the child: far below what a runaway would take
TIME_LIMIT = 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def igvm(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """`python -m igvm ARGV` bounded in memory and time; never a traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "igvm", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=TIME_LIMIT,
        preexec_fn=_limit_memory,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _page(gpa: int, mask: int = 1, flags: int = 0) -> bytes:
    return tlv(0x302, struct.pack("<QIIIHH", gpa, mask, 0, flags, 0, 0))


def _area(index: int, size: int) -> bytes:
    return tlv(0x301, struct.pack("<QII", size, index, 0))


def _insert(gpa: int, index: int, mask: int = 1) -> bytes:
    return tlv(0x303, struct.pack("<QII", gpa, mask, index))


def _write(tmp_path: Path, name: str, raw: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


# ---------------------------------------------------------------- the crash: area past 2^64


def test_insert_whose_area_runs_past_2_64_is_refused_by_every_command(tmp_path: Path) -> None:
    raw = assemble([platform_entry(), _area(0, 0x2000), _insert((1 << 64) - 0x1000, 0)])
    bad = _write(tmp_path, "wrap.igvm", raw)
    good = _write(tmp_path, "good.igvm", v4_image().to_bytes())
    for argv in (("check", bad), ("measure", bad), ("dump", bad)):
        result = igvm(*argv)
        assert result.returncode == 1, argv
        assert f"{bad}: invalid IGVM: PARAMETER_INSERT at GPA 0xfffffffffffff000" in result.stderr
        assert "runs past the 64-bit GPA space" in result.stderr
    # diff says which of its two files is invalid, whichever side it is on
    for a, b in ((bad, good), (good, bad)):
        result = igvm("diff", a, b)
        assert result.returncode == 1
        assert result.stderr.startswith(f"{bad}: invalid IGVM:"), result.stderr
        assert str(good) not in result.stderr


# ------------------------------------------------------------------------------ bounds


def test_a_thousand_gigabyte_parameter_areas_are_refused_at_once(tmp_path: Path) -> None:
    entries = [platform_entry()]
    for index in range(1000):
        entries += [_area(index, 1 << 30), _insert((index + 1) << 32, index)]
    path = _write(tmp_path, "areas.igvm", assemble(entries))
    for command in ("check", "measure"):
        result = igvm(command, path)
        assert result.returncode == 1
        assert "parameter areas total 0x80000000 bytes with this one" in result.stderr
        assert "header index 3," in result.stderr  # the second area breaks the total


def test_measure_of_a_gigabyte_insert_stays_within_the_memory_limit(tmp_path: Path) -> None:
    # 262144 pages of PAGE.ADD: the blocks are streamed into the hash, never held as a list.
    raw = assemble([platform_entry(), _area(0, 1 << 30), _insert(1 << 32, 0)])
    result = igvm("measure", _write(tmp_path, "big.igvm", raw))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 96


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    yield path


@pytest.mark.parametrize("command", ["check", "dump", "measure"])
def test_only_regular_files_are_read(command: str, fifo: Path, tmp_path: Path) -> None:
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/zero"), "a character device")):
        result = igvm(command, path)
        assert result.returncode == 1
        assert f"{path}: is {kind}, not a regular file" in result.stderr
    result = igvm(command, tmp_path)
    assert result.returncode == 1 and f"{tmp_path}: is a directory" in result.stderr


def test_diff_names_the_input_that_is_not_a_regular_file(fifo: Path, tmp_path: Path) -> None:
    good = _write(tmp_path, "good.igvm", v4_image().to_bytes())
    result = igvm("diff", good, fifo)
    assert result.returncode == 1 and f"{fifo}: is a FIFO, not a regular file" in result.stderr


RECIPE_HEAD = "components:\n  - {name: a, kind: blob, gpa: 0x100000, "


@pytest.mark.parametrize(
    ("component", "message"),
    [
        ("file: /dev/zero}", "/dev/zero: is a character device, not a regular file"),
        ("file: pipe}", "pipe: is a FIFO, not a regular file"),
        ("file: sub}", "sub: is a directory"),
        ("fill: 1, size: 0x100000000000}", "would take the image past its 0x10000000-byte"),
        ("size: 64GiB}", "would take the image past its 0x10000000-byte limit"),
        ("file: big.bin}", "big.bin: is 268439552 bytes, more than the 268435456-byte limit"),
    ],
)
def test_recipe_inputs_are_bounded(
    component: str, message: str, fifo: Path, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    with open(tmp_path / "big.bin", "wb") as big:  # sparse: no disk or memory is used
        big.truncate((256 << 20) + 4096)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE_HEAD + component + "\n")
    result = igvm("build", recipe, "-o", tmp_path / "out.igvm")
    assert result.returncode == 1
    assert "recipe key components[0]." in result.stderr and message in result.stderr
    assert not (tmp_path / "out.igvm").exists()


def test_recipe_itself_must_be_a_regular_file(fifo: Path, tmp_path: Path) -> None:
    result = igvm("build", fifo, "-o", tmp_path / "out.igvm")
    assert result.returncode == 1 and f"{fifo}: is a FIFO, not a regular file" in result.stderr


# --------------------------------------------------- images no TDX host loads are refused


def _tdx_platform(boundary: int) -> bytes:
    return tlv(0x001, SupportedPlatform(1, 0, IGVM_PLATFORM_TDX, 1, boundary).pack())


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [platform_entry(), _page(1 << 47)],
            "PAGE_DATA at GPA 0x800000000000 (+0x1000 bytes) is private but reaches the TDX "
            "shared-GPA boundary 0x800000000000",
        ),
        (
            [_tdx_platform(0), _page((1 << 47) - 0x1000), _page(1 << 47)],
            "reaches the TDX shared-GPA boundary 0x800000000000",
        ),
        (
            [_tdx_platform(1 << 51), _page(1 << 51)],
            "reaches the TDX shared-GPA boundary 0x8000000000000",
        ),
        (
            [platform_entry(), _area(0, 0x2000), _insert((1 << 47) - 0x1000, 0)],
            "PARAMETER_INSERT at GPA 0x7ffffffff000 (+0x2000 bytes) is private but reaches",
        ),
        (
            [platform_entry(), _page(0x5000), _page(0x6000), _page(0x5000)],
            "GPA 0x5000 is added twice for TDX (the pages from header 1 and from header 3",
        ),
        (
            [platform_entry(), _area(0, 0x3000), _page(0x9000), _insert(0x8000, 0)],
            "GPA 0x9000 is added twice for TDX",
        ),
        (
            [_tdx_platform(0x40), _page(0)],
            "SUPPORTED_PLATFORM.shared_gpa_boundary 0x40 is not one a TDX host supports",
        ),
    ],
    ids=[
        "page_at_boundary",
        "page_at_default_boundary",
        "page_at_gpaw52_boundary",
        "insert_across_boundary",
        "page_twice",
        "insert_over_page",
        "boundary_0x40",
    ],
)
def test_images_no_tdx_host_loads_are_refused(
    entries: list[bytes], message: str, tmp_path: Path
) -> None:
    path = _write(tmp_path, "bad.igvm", assemble(entries))
    for command in ("check", "measure"):
        result = igvm(command, path)
        assert result.returncode == 1, (command, result.stdout)
        assert message in result.stderr, result.stderr
        assert result.stdout == ""


def test_shared_pages_and_other_platforms_pages_are_not_tdx_loads(tmp_path: Path) -> None:
    snp = tlv(0x001, SupportedPlatform(2, 0, 2, 1, 0).pack())
    entries = [platform_entry(), snp, _page(0x5000), _page(0x5000, mask=2), _page(0x5000, 1, 4)]
    path = _write(tmp_path, "ok.igvm", assemble(entries))
    assert igvm("check", path).returncode == 0


@pytest.mark.parametrize(
    ("gpas", "builder_says", "check_says"),
    [
        ([0x5000, 0x5000], "page already present", "GPA 0x5000 is added twice for TDX"),
        ([1 << 47], "shared GPA; only private pages are added", "shared-GPA boundary"),
    ],
    ids=["page_twice", "page_at_boundary"],
)
def test_check_agrees_with_the_tdx_module_simulator(
    gpas: list[int], builder_says: str, check_says: str, tmp_path: Path
) -> None:
    """The TD builder (tdxsim, PAGE.ADD page by page, no IGVM parsing) refuses what check does."""
    from tdxdefs.tdcall import GPAW_48
    from tdxsim.module.build import BuildError, TdBuilder, TdConfig

    builder = TdBuilder(TdConfig(ram=[(0, 1 << 20)], num_l2_vms=1, max_vcpus=1, gpaw=GPAW_48))
    with pytest.raises(BuildError, match=builder_says):
        for gpa in gpas:
            builder.add_page_run(gpa, [b""], measured=True)
    path = _write(tmp_path, "bad.igvm", assemble([platform_entry(), *map(_page, gpas)]))
    result = igvm("check", path)
    assert result.returncode == 1 and check_says in result.stderr


@pytest.mark.parametrize(
    ("boundary", "message"),
    [
        ("64", "64 is no boundary a TDX host supports"),
        ("0x40", "64 is no boundary a TDX host supports"),
        ("48", "48 is no boundary a TDX host supports"),
    ],
)
def test_recipe_boundary_must_be_one_a_tdx_host_supports(
    boundary: str, message: str, tmp_path: Path
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"platform: {{shared_gpa_boundary: {boundary}}}\n" + RECIPE_HEAD + "size: 4KiB}\n"
    )
    result = igvm("build", recipe, "-o", tmp_path / "o.igvm")
    assert result.returncode == 1
    assert "platform.shared_gpa_boundary" in result.stderr and message in result.stderr


def test_recipe_bit_number_and_address_forms_agree(tmp_path: Path) -> None:
    outputs = []
    for number, boundary in enumerate(("47", "0x800000000000", "51", "0x8000000000000")):
        recipe = tmp_path / f"r{number}.yaml"
        recipe.write_text(
            f"platform: {{shared_gpa_boundary: {boundary}}}\n" + RECIPE_HEAD + "size: 4KiB}\n"
        )
        result = igvm("build", recipe, "-o", tmp_path / f"o{number}.igvm")
        assert result.returncode == 0, result.stderr
        outputs.append((tmp_path / f"o{number}.igvm").read_bytes())
    assert outputs[0] == outputs[1] and outputs[2] == outputs[3] and outputs[0] != outputs[2]


def test_recipe_private_component_above_the_boundary_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("components:\n  - {name: a, kind: blob, gpa: 0x7FFFFFFFF000, size: 8KiB}\n")
    result = igvm("build", recipe, "-o", tmp_path / "o.igvm")
    assert result.returncode == 1
    assert "recipe key components[0].gpa: private pages up to 0x800000001000" in result.stderr


def test_measure_mask_of_an_absent_platform_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "v4.igvm", v4_image().to_bytes())
    result = igvm("measure", "--mask", "4", path)
    assert result.returncode == 1 and result.stdout == ""
    assert "no SUPPORTED_PLATFORM has compatibility mask 0x4 (the file declares 0x1)" in (
        result.stderr
    )


# ------------------------------------------------------------------------------ usability


def test_warnings_are_one_line_per_kind_with_a_count(tmp_path: Path) -> None:
    entries = [platform_entry()] + [tlv(0x8000_0400, b"")] * 3000 + [tlv(0x8000_0401, b"")]
    path = _write(tmp_path, "noisy.igvm", assemble(entries))
    result = igvm("dump", path)
    assert result.returncode == 0
    lines = result.stderr.splitlines()
    assert lines == [
        f"{path}: warning: unknown optional header type 0x80000400 skipped (3000 times; "
        "first at header 1, file offset 0x30)",
        f"{path}: warning: unknown optional header type 0x80000401 skipped (once; "
        f"first at header 3001, file offset {0x30 + 3000 * 8:#x})",
    ]


def test_every_error_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.igvm"
    for argv in (("check", missing), ("measure", missing), ("dump", missing)):
        result = igvm(*argv)
        assert result.returncode == 1 and str(missing) in result.stderr
    good = _write(tmp_path, "good.igvm", v4_image().to_bytes())
    result = igvm("diff", good, missing)
    assert result.returncode == 1 and str(missing) in result.stderr


def test_diff_counts_warnings_per_file(tmp_path: Path) -> None:
    noisy = _write(
        tmp_path,
        "noisy.igvm",
        assemble([platform_entry()] + [tlv(0x8000_0400, b"")] * 10 + [_page(0x1000)]),
    )
    quiet = _write(tmp_path, "quiet.igvm", assemble([platform_entry(), _page(0x1000)]))
    result = igvm("diff", quiet, noisy)
    assert result.returncode == 1  # the directive lists differ
    assert result.stderr.splitlines() == [
        f"{noisy}: warning: unknown optional header type 0x80000400 skipped (10 times; "
        "first at header 1, file offset 0x30)"
    ]


def test_check_strict_passes_a_clean_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "v4.igvm", v4_image().to_bytes())
    result = igvm("check", "--strict", path)
    assert result.returncode == 0 and result.stdout == f"{path}: valid IGVM (7 headers)\n"
    assert result.stderr == ""
