"""Recipes: the documented schema builds the expected image; every mistake names its key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from igvm.build import build, build_image
from igvm.format import read
from igvm.headers import (
    IGVM_PAGE_FLAG_SHARED,
    IGVM_PAGE_FLAG_UNMEASURED,
    IGVM_PLATFORM_TDX,
    PAGE_SIZE,
    TDX_POLICY_SEPT_VE_DISABLE,
    CommandLine,
    GuestPolicy,
    MemoryMap,
    PageData,
    ParameterArea,
    ParameterInsert,
    SupportedPlatform,
    VpCount,
)
from igvm.measure import mrtd
from igvm.recipe import RecipeError, load_recipe, load_recipe_text, parse_number
from tests.support.mrtd_by_hand import hand_add, hand_page

ROOT = Path(__file__).resolve().parents[3]
TEST_RECIPE = ROOT / "igvm" / "recipes" / "test-image.yaml"


def test_project_test_recipe_builds_the_documented_image(tmp_path: Path) -> None:
    out = tmp_path / "test.igvm"
    digest = build(TEST_RECIPE, out)
    image = read(out)
    assert image.platforms == [SupportedPlatform(1, 2, IGVM_PLATFORM_TDX, 1, 1 << 47)]
    assert image.initializations == [GuestPolicy(TDX_POLICY_SEPT_VE_DISABLE, 1)]
    assert image.directives[:4] == [
        ParameterArea(0x1000, 0),
        VpCount(0, 0),
        MemoryMap(0, 0x100),
        CommandLine(0, 0x800),
    ]
    assert image.directives[-1] == ParameterInsert(0x9000, 1, 0)
    l1 = (ROOT / "igvm/recipes/test-blobs/l1.bin").read_bytes()
    firmware = (ROOT / "igvm/recipes/test-blobs/l2-firmware.bin").read_bytes()
    l1_pages = l1.ljust(0x4000, b"\0")
    stream = b"".join(
        hand_page(0x100000 + i, l1_pages[i : i + 4096]) for i in range(0, 0x4000, 4096)
    )
    stream += hand_page(0xFFFFF000, firmware)
    stream += hand_add(0x210000)  # the unmeasured scratch page; the shared ring adds nothing
    stream += hand_add(0x9000)  # the parameter insert
    assert digest == hashlib.sha384(stream).digest() == mrtd(out)
    flags = {d.gpa: d.flags for d in image.directives if isinstance(d, PageData)}
    assert flags[0x200000] == flags[0x201000] == IGVM_PAGE_FLAG_SHARED
    assert flags[0x210000] == IGVM_PAGE_FLAG_UNMEASURED


def test_build_is_deterministic(tmp_path: Path) -> None:
    build(TEST_RECIPE, tmp_path / "a")
    build(TEST_RECIPE, tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_blob_change_changes_mrtd(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"one")
    text = "components: [{name: a, kind: blob, file: blob.bin, gpa: 0x1000}]\n"
    first = build_image(load_recipe_text(text, tmp_path))
    (tmp_path / "blob.bin").write_bytes(b"two")
    assert mrtd(first) != mrtd(build_image(load_recipe_text(text, tmp_path)))


def test_fill_covers_whole_pages_when_size_is_not_a_page_multiple(tmp_path: Path) -> None:
    text = "components: [{name: a, kind: blob, fill: 0xCC, size: 0x1800, gpa: 0x1000}]\n"
    recipe = load_recipe_text(text, tmp_path)
    assert recipe.components[0].size == 0x2000
    assert recipe.components[0].fill == 0xCC and recipe.components[0].data == b""
    pages = [d for d in build_image(recipe).directives if isinstance(d, PageData)]
    assert [(p.gpa, p.data) for p in pages] == [
        (0x1000, b"\xcc" * PAGE_SIZE),
        (0x2000, b"\xcc" * PAGE_SIZE),
    ]
    by_hand = hashlib.sha384(
        hand_page(0x1000, b"\xcc" * PAGE_SIZE) + hand_page(0x2000, b"\xcc" * PAGE_SIZE)
    ).digest()
    assert mrtd(build_image(recipe)) == by_hand


def test_numbers_accept_hex_and_units() -> None:
    assert parse_number("0x1000", "k") == 4096
    assert parse_number("64KiB", "k") == 65536
    assert parse_number("2MiB", "k") == 2 << 20
    assert parse_number(7, "k") == 7


BASE = "components: [{name: a, kind: blob, fill: 1, size: 4KiB, gpa: 0x1000}]\n"
ERRORS = [
    ("[1, 2]", "(document)", "expected a mapping"),
    ("platform: {}\n", "components", "is required"),
    (BASE + "extra: 1\n", "extra", "unknown key"),
    (BASE + "platform: {compatibility_mask: 3}\n", "platform.compatibility_mask", "one bit"),
    (BASE + "platform: {highest_vtl: 1}\n", "platform.highest_vtl", "0 or 2"),
    (
        BASE + "platform: {shared_gpa_boundary: 0x3000}\n",
        "platform.shared_gpa_boundary",
        "no boundary a TDX host supports",
    ),
    (
        BASE + "platform: {policy: {debug_allowed: 1}}\n",
        "platform.policy.debug_allowed",
        "true or false",
    ),
    (BASE + "platform: {policy: {bogus: true}}\n", "platform.policy.bogus", "unknown key"),
    ("components: []\n", "components", "non-empty list"),
    ("components: [{name: a, kind: rom, gpa: 0, size: 4096}]\n", "components[0].kind", "one of"),
    (
        "components: [{name: a, kind: blob, gpa: 0x1001, size: 4096}]\n",
        "components[0].gpa",
        "multiple of 4 KiB",
    ),
    ("components: [{name: a, kind: blob, gpa: 0}]\n", "components[0].size", "empty"),
    ("components: [{name: 'a b', kind: blob, gpa: 0, size: 1}]\n", "components[0].name", "letters"),
    ("components: [{kind: blob, gpa: 0, size: 1}]\n", "components[0].name", "is required"),
    (
        "components: [{name: a, kind: blob, gpa: 0, file: missing.bin}]\n",
        "components[0].file",
        "cannot read",
    ),
    (
        "components: [{name: a, kind: blob, gpa: 0, fill: 300, size: 1}]\n",
        "components[0].fill",
        "one byte",
    ),
    (
        "components: [{name: a, kind: blob, gpa: 0, fill: 1}]\n",
        "components[0].size",
        "required with fill",
    ),
    (
        "components: [{name: a, kind: blob, gpa: 0, size: 1, measured: 'yes'}]\n",
        "components[0].measured",
        "true or false",
    ),
    (
        "components: [{name: a, kind: blob, gpa: 0, size: 1, data_type: weird}]\n",
        "components[0].data_type",
        "one of",
    ),
    (
        "components: [{name: a, kind: blob, gpa: 0, size: 1, data_type: [x]}]\n",
        "components[0].data_type",
        "one of",
    ),
    (
        "components: [{name: a, kind: blob, gpa: 0, size: 8KiB}, "
        "{name: b, kind: blob, gpa: 0x1000, size: 1}]\n",
        "components[1].gpa",
        "overlaps",
    ),
    (
        "components: [{name: a, kind: blob, gpa: 0, size: 1}, {name: a, kind: blob, gpa: 0x1000, "
        "size: 1}]\n",
        "components[1].name",
        "used twice",
    ),
    (
        BASE + "parameter_areas: [{name: p, gpa: 0x1000, size: 4KiB}]\n",
        "parameter_areas[0].gpa",
        "overlaps",
    ),
    (
        BASE + "parameter_areas: [{name: p, gpa: 0x9000, size: 100}]\n",
        "parameter_areas[0].size",
        "multiple of 4 KiB",
    ),
    (
        BASE + "parameter_areas: [{name: p, gpa: 0x9000, size: 4KiB, parameters: "
        "[{type: vp_count, offset: 4094}]}]\n",
        "parameter_areas[0].parameters[0].offset",
        "leaves less than 4 bytes",
    ),
    (
        BASE + "parameter_areas: [{name: p, gpa: 0x9000, size: 4KiB, parameters: "
        "[{type: acpi, offset: 0}]}]\n",
        "parameter_areas[0].parameters[0].type",
        "one of",
    ),
    ("components: [{name: a, kind: blob, gpa: -4096, size: 1}]\n", "components[0].gpa", "negative"),
    (
        "components: [{name: a, kind: blob, gpa: '12 parsecs', size: 1}]\n",
        "components[0].gpa",
        "expected a number",
    ),
    ("components: {name: a\n", "(document)", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "key", "message"), ERRORS)
def test_recipe_errors_name_the_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    with pytest.raises(RecipeError) as caught:
        load_recipe_text(text, tmp_path)
    assert caught.value.key == key
    assert message in str(caught.value)
    assert f"recipe key {key}:" in str(caught.value)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.yaml")
