"""The YAML image recipe: schema, loading and validation with errors that name the key.

Schema (every number may be written as an int or a string such as "0x100000" or "2MiB"):

    platform:                       # the TDX SUPPORTED_PLATFORM header (and GUEST_POLICY)
      compatibility_mask: 1         # optional, default 1; one bit
      highest_vtl: 2                # optional, 0 or 2; default 2 (TD partitioning: L1 is VTL2)
      shared_gpa_boundary: 47       # the shared bit: 47 or 51 (GPA width 48 or 52), or the
                                    #   address 1 << 47 or 1 << 51; default 47
      policy:                       # optional TdxPolicy bits (an IGVM encoding)
        debug_allowed: false
        sept_ve_disable: true
        migratable: false
    components:                     # loaded in this order, each page lowest GPA first
      - name: l1                    # unique; [A-Za-z0-9_.-]+
        kind: paravisor             # paravisor (L1 image) | firmware (L2 image) | blob
        file: l1.bin                # path relative to the recipe; or `fill: 0x00` (one byte
                                    #   repeated over every page of `size`, which it needs)
                                    #   or neither (zero pages, need `size`)
        gpa: 0x100000               # 4 KiB aligned
        size: 64KiB                 # optional; pads with zero pages (>= the file's length)
        measured: true              # default true; false gives PAGE_DATA unmeasured
        shared: false               # default false; true gives host-visible, unmeasured pages
        data_type: normal           # normal | secrets | cpuid_data | cpuid_xf
    parameter_areas:                # each becomes PARAMETER_AREA + parameters + PARAMETER_INSERT
      - name: boot_params
        gpa: 0x9000                 # where the loader inserts it (unmeasured, PAGE.ADD only)
        size: 4KiB                  # page multiple
        parameters:
          - {type: vp_count, offset: 0}
          - {type: memory_map, offset: 0x100}
          - {type: command_line, offset: 0x800}

Parameter types: vp_count, memory_map, command_line, mmio_ranges, madt, srat, slit, pptt,
device_tree, environment_info. Regions (components and inserted areas) must not overlap, and
private ones (everything but `shared: true`) must lie below the shared-GPA boundary, as a TDX
host requires. Directive order in the image: parameter areas and their parameters, components,
inserts.

shared_gpa_boundary: a number below 64 is the shared bit's number, anything else an address. A
TDX TD's shared bit is the top bit of its GPA width, 48 or 52 (Intel TDX Module ABI
Specification, TD_PARAMS.CONFIG_FLAGS.GPAW), so only 47, 51, 1 << 47 and 1 << 51 are accepted:
the other values (64 as a bit number, 0x40 as an address) are no boundary a TDX host loads.

Bounds: the recipe and every file it names must be regular files (a device or FIFO is refused),
and components plus parameter areas total at most MAX_IMAGE_BYTES. `fill` pages are made one at
a time when the image is built.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from igvm.errors import IgvmError
from igvm.headers import (
    ALLOWED_HIGHEST_VTL,
    IGVM_PAGE_DATA_TYPE_CPUID_DATA,
    IGVM_PAGE_DATA_TYPE_CPUID_XF,
    IGVM_PAGE_DATA_TYPE_NORMAL,
    IGVM_PAGE_DATA_TYPE_SECRETS,
    PAGE_SIZE,
    TDX_POLICY_DEBUG_ALLOWED,
    TDX_POLICY_MIGRATABLE,
    TDX_POLICY_SEPT_VE_DISABLE,
    CommandLine,
    DeviceTree,
    EnvironmentInfo,
    Madt,
    MemoryMap,
    MmioRanges,
    ParameterHeader,
    Pptt,
    Slit,
    Srat,
    VpCount,
)
from igvm.source import read_regular

COMPONENT_KINDS = ("paravisor", "firmware", "blob")
DATA_TYPES = {
    "normal": IGVM_PAGE_DATA_TYPE_NORMAL,
    "secrets": IGVM_PAGE_DATA_TYPE_SECRETS,
    "cpuid_data": IGVM_PAGE_DATA_TYPE_CPUID_DATA,
    "cpuid_xf": IGVM_PAGE_DATA_TYPE_CPUID_XF,
}
POLICY_BITS = {
    "debug_allowed": TDX_POLICY_DEBUG_ALLOWED,
    "sept_ve_disable": TDX_POLICY_SEPT_VE_DISABLE,
    "migratable": TDX_POLICY_MIGRATABLE,
}
PARAMETER_KINDS: dict[str, type[ParameterHeader]] = {
    "vp_count": VpCount,
    "memory_map": MemoryMap,
    "command_line": CommandLine,
    "mmio_ranges": MmioRanges,
    "madt": Madt,
    "srat": Srat,
    "slit": Slit,
    "pptt": Pptt,
    "device_tree": DeviceTree,
    "environment_info": EnvironmentInfo,
}
DEFAULT_MASK = 1
DEFAULT_HIGHEST_VTL = 2
DEFAULT_SHARED_GPA_BIT = 47
TDX_SHARED_GPA_BITS = (47, 51)
MAX_GPA_BITS = 64
# Components and parameter areas together: an image is built in memory, so this bounds `build`.
MAX_IMAGE_BYTES = 256 << 20
MAX_RECIPE_BYTES = 1 << 20
BYTE_MAX = 0xFF
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
SIZE_SUFFIXES = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
SIZE_PATTERN = re.compile(r"^\s*(0x[0-9a-fA-F]+|\d+)\s*(KiB|MiB|GiB)?\s*$")

TOP_KEYS = {"platform", "components", "parameter_areas"}
PLATFORM_KEYS = {"compatibility_mask", "highest_vtl", "shared_gpa_boundary", "policy"}
COMPONENT_KEYS = {"name", "kind", "file", "fill", "gpa", "size", "measured", "shared", "data_type"}
AREA_KEYS = {"name", "gpa", "size", "parameters"}
PARAMETER_KEYS = {"type", "offset"}


class RecipeError(IgvmError):
    """A recipe is malformed; `key` is the dotted path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"recipe key {key}: {message}")


@dataclass(frozen=True)
class Component:
    """A named image loaded page by page at a GPA."""

    name: str
    kind: str
    gpa: int
    data: bytes
    size: int
    measured: bool = True
    shared: bool = False
    data_type: int = IGVM_PAGE_DATA_TYPE_NORMAL
    fill: int | None = None  # every page is this byte throughout (then `data` is empty)

    def page(self, offset: int) -> bytes:
        """The 4 KiB page at `offset` into the component (zero-padded past the data)."""
        if self.fill is not None:
            return bytes([self.fill]) * PAGE_SIZE
        return self.data[offset : offset + PAGE_SIZE]


@dataclass(frozen=True)
class Parameter:
    """One parameter the loader writes into an area."""

    kind: type[ParameterHeader]
    offset: int


@dataclass(frozen=True)
class ParameterAreaSpec:
    """A parameter area, its parameters, and the GPA it is inserted at."""

    name: str
    index: int
    gpa: int
    size: int
    parameters: tuple[Parameter, ...]


@dataclass(frozen=True)
class Recipe:
    """A validated recipe, with blob contents loaded."""

    compatibility_mask: int
    highest_vtl: int
    shared_gpa_boundary: int
    policy: int | None
    components: tuple[Component, ...]
    parameter_areas: tuple[ParameterAreaSpec, ...] = field(default_factory=tuple)


def parse_number(value: Any, key: str) -> int:
    """An int, or a string like "0x1000", "4096" or "64KiB"."""
    if isinstance(value, bool):
        raise RecipeError(key, f"expected a number, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and (match := SIZE_PATTERN.match(value)):
        number = int(match.group(1), 0) * SIZE_SUFFIXES[match.group(2) or ""]
    else:
        raise RecipeError(key, f"expected a number (e.g. 4096, 0x1000, 64KiB), got {value!r}")
    if number < 0:
        raise RecipeError(key, f"must not be negative (got {number})")
    return number


def _mapping(value: Any, key: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecipeError(key or "(document)", f"expected a mapping, got {type(value).__name__}")
    for name in value:
        if name not in allowed:
            raise RecipeError(
                f"{key}.{name}" if key else str(name),
                f"unknown key; allowed: {', '.join(sorted(allowed))}",
            )
    for name in sorted(required - set(value)):
        raise RecipeError(f"{key}.{name}" if key else name, "is required")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise RecipeError(key, f"expected true or false, got {value!r}")
    return value


def _aligned(value: Any, key: str, *, nonzero: bool = False) -> int:
    number = parse_number(value, key)
    if number % PAGE_SIZE:
        raise RecipeError(key, f"{number:#x} must be a multiple of 4 KiB")
    if nonzero and number == 0:
        raise RecipeError(key, "must not be zero")
    if number >= 1 << MAX_GPA_BITS:
        raise RecipeError(key, f"{number:#x} does not fit in 64 bits")
    return number


def _name(value: Any, key: str, seen: set[str]) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise RecipeError(key, f"expected a name of letters, digits, '_', '.', '-', got {value!r}")
    if value in seen:
        raise RecipeError(key, f"name {value!r} is used twice")
    seen.add(value)
    return value


def _platform(raw: Any) -> tuple[int, int, int, int | None]:
    spec = _mapping(raw if raw is not None else {}, "platform", PLATFORM_KEYS, set())
    mask = parse_number(spec.get("compatibility_mask", DEFAULT_MASK), "platform.compatibility_mask")
    if mask == 0 or mask & (mask - 1) or mask > 0xFFFF_FFFF:
        raise RecipeError(
            "platform.compatibility_mask", f"must be one bit of a u32 (got {mask:#x})"
        )
    vtl = parse_number(spec.get("highest_vtl", DEFAULT_HIGHEST_VTL), "platform.highest_vtl")
    if vtl not in ALLOWED_HIGHEST_VTL:
        raise RecipeError("platform.highest_vtl", f"must be 0 or 2 (got {vtl})")
    boundary = parse_number(
        spec.get("shared_gpa_boundary", DEFAULT_SHARED_GPA_BIT), "platform.shared_gpa_boundary"
    )
    if boundary < MAX_GPA_BITS:
        bit = boundary
        boundary = 1 << boundary
    else:
        bit = boundary.bit_length() - 1 if boundary & (boundary - 1) == 0 else -1
    if bit not in TDX_SHARED_GPA_BITS:
        raise RecipeError(
            "platform.shared_gpa_boundary",
            f"{spec.get('shared_gpa_boundary')!r} is no boundary a TDX host supports: give the "
            "shared bit 47 or 51, or the power-of-two address 1 << 47 or 1 << 51",
        )
    policy: int | None = None
    if "policy" in spec:
        bits = _mapping(spec["policy"], "platform.policy", set(POLICY_BITS), set())
        policy = 0
        for name, bit in POLICY_BITS.items():
            if _bool(bits.get(name, False), f"platform.policy.{name}"):
                policy |= bit
    return mask, vtl, boundary, policy


def _component(raw: Any, key: str, base: Path, names: set[str], budget: int) -> Component:
    """One component; `budget` is what is left of MAX_IMAGE_BYTES for it."""
    spec = _mapping(raw, key, COMPONENT_KEYS, {"name", "kind", "gpa"})
    name = _name(spec["name"], f"{key}.name", names)
    kind = spec["kind"]
    if kind not in COMPONENT_KINDS:
        raise RecipeError(
            f"{key}.kind", f"must be one of {', '.join(COMPONENT_KINDS)}, got {kind!r}"
        )
    gpa = _aligned(spec["gpa"], f"{key}.gpa")
    if "file" in spec and "fill" in spec:
        raise RecipeError(f"{key}.fill", "give either file or fill, not both")
    data = b""
    if "file" in spec:
        if not isinstance(spec["file"], str):
            raise RecipeError(f"{key}.file", f"expected a path, got {spec['file']!r}")
        path = base / spec["file"]
        try:
            data = read_regular(path, budget)
        except IgvmError as exc:
            raise RecipeError(f"{key}.file", exc.rule) from exc
    size = len(data)
    if "size" in spec:
        size = parse_number(spec["size"], f"{key}.size")
        if size > budget:
            raise RecipeError(
                f"{key}.size",
                f"{size:#x} bytes would take the image past its {MAX_IMAGE_BYTES:#x}-byte limit",
            )
        if size < len(data):
            raise RecipeError(
                f"{key}.size", f"{size:#x} is smaller than the file ({len(data):#x} bytes)"
            )
    fill: int | None = None
    if "fill" in spec:
        fill = parse_number(spec["fill"], f"{key}.fill")
        if fill > BYTE_MAX:
            raise RecipeError(f"{key}.fill", f"must be one byte (got {fill:#x})")
        if "size" not in spec:
            raise RecipeError(f"{key}.size", "is required with fill")
    if size == 0:
        raise RecipeError(f"{key}.size", "the component is empty; give a file or a size")
    size = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    if gpa + size > 1 << MAX_GPA_BITS:
        raise RecipeError(f"{key}.gpa", "the component runs past the 64-bit GPA space")
    measured = _bool(spec.get("measured", True), f"{key}.measured")
    shared = _bool(spec.get("shared", False), f"{key}.shared")
    data_type_name = spec.get("data_type", "normal")
    if not isinstance(data_type_name, str) or data_type_name not in DATA_TYPES:
        raise RecipeError(
            f"{key}.data_type", f"must be one of {', '.join(DATA_TYPES)}, got {data_type_name!r}"
        )
    return Component(
        name, kind, gpa, data, size, measured, shared, DATA_TYPES[data_type_name], fill
    )


def _area(raw: Any, key: str, index: int, names: set[str], budget: int) -> ParameterAreaSpec:
    spec = _mapping(raw, key, AREA_KEYS, {"name", "gpa", "size"})
    name = _name(spec["name"], f"{key}.name", names)
    gpa = _aligned(spec["gpa"], f"{key}.gpa")
    size = _aligned(spec["size"], f"{key}.size", nonzero=True)
    if size > budget:
        raise RecipeError(
            f"{key}.size",
            f"{size:#x} bytes would take the image past its {MAX_IMAGE_BYTES:#x}-byte limit",
        )
    if gpa + size > 1 << MAX_GPA_BITS:
        raise RecipeError(f"{key}.gpa", "the area runs past the 64-bit GPA space")
    raw_parameters = spec.get("parameters", [])
    if not isinstance(raw_parameters, list):
        raise RecipeError(f"{key}.parameters", "expected a list")
    parameters = []
    for number, item in enumerate(raw_parameters):
        item_key = f"{key}.parameters[{number}]"
        entry = _mapping(item, item_key, PARAMETER_KEYS, {"type", "offset"})
        kind = PARAMETER_KINDS.get(entry["type"]) if isinstance(entry["type"], str) else None
        if kind is None:
            raise RecipeError(
                f"{item_key}.type",
                f"must be one of {', '.join(PARAMETER_KINDS)}, got {entry['type']!r}",
            )
        offset = parse_number(entry["offset"], f"{item_key}.offset")
        if offset + kind.MIN_BYTES > size:
            raise RecipeError(
                f"{item_key}.offset",
                f"{offset:#x} leaves less than {kind.MIN_BYTES} bytes in the {size:#x}-byte area",
            )
        parameters.append(Parameter(kind, offset))
    return ParameterAreaSpec(name, index, gpa, size, tuple(parameters))


def _check_overlaps(recipe: Recipe) -> None:
    regions = [
        (c.gpa, c.gpa + c.size, f"components[{i}] ({c.name})")
        for i, c in enumerate(recipe.components)
    ]
    regions += [
        (a.gpa, a.gpa + a.size, f"parameter_areas[{i}] ({a.name})")
        for i, a in enumerate(recipe.parameter_areas)
    ]
    private = [
        (c.gpa + c.size, f"components[{i}]")
        for i, c in enumerate(recipe.components)
        if not c.shared
    ]
    private += [(a.gpa + a.size, f"parameter_areas[{i}]")
                for i, a in enumerate(recipe.parameter_areas)]  # fmt: skip
    for end, key in private:
        if end > recipe.shared_gpa_boundary:
            raise RecipeError(
                f"{key}.gpa",
                f"private pages up to {end:#x} reach the shared-GPA boundary "
                f"{recipe.shared_gpa_boundary:#x}; a TDX host cannot add them",
            )
    regions.sort()
    for (start_a, end_a, key_a), (start_b, _end_b, key_b) in itertools.pairwise(regions):
        if start_b < end_a:
            raise RecipeError(
                f"{key_b.split(' ')[0]}.gpa",
                f"{key_b} at {start_b:#x} overlaps {key_a} [{start_a:#x}, {end_a:#x})",
            )


def load_recipe_text(text: str, base: Path) -> Recipe:
    """Parse and validate recipe YAML; `base` resolves relative `file` paths."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError("(document)", f"not valid YAML: {exc}") from exc
    top = _mapping(raw, "", TOP_KEYS, {"components"})
    mask, vtl, boundary, policy = _platform(top.get("platform"))
    raw_components = top["components"]
    if not isinstance(raw_components, list) or not raw_components:
        raise RecipeError("components", "expected a non-empty list")
    names: set[str] = set()
    budget = MAX_IMAGE_BYTES
    components_list: list[Component] = []
    for i, item in enumerate(raw_components):
        component = _component(item, f"components[{i}]", base, names, budget)
        budget -= component.size
        components_list.append(component)
    components = tuple(components_list)
    raw_areas = top.get("parameter_areas", [])
    if not isinstance(raw_areas, list):
        raise RecipeError("parameter_areas", "expected a list")
    areas_list: list[ParameterAreaSpec] = []
    for i, item in enumerate(raw_areas):
        area = _area(item, f"parameter_areas[{i}]", i, names, budget)
        budget -= area.size
        areas_list.append(area)
    areas = tuple(areas_list)
    recipe = Recipe(mask, vtl, boundary, policy, components, areas)
    _check_overlaps(recipe)
    return recipe


def load_recipe(path: str | Path) -> Recipe:
    """Load a recipe file; relative blob paths are relative to the recipe's directory."""
    recipe_path = Path(path)
    try:
        text = read_regular(recipe_path, MAX_RECIPE_BYTES).decode()
    except IgvmError as exc:
        raise RecipeError("(file)", f"cannot read recipe: {exc.rule}") from exc
    except UnicodeDecodeError as exc:
        raise RecipeError("(file)", f"cannot read recipe {recipe_path}: {exc}") from exc
    return load_recipe_text(text, recipe_path.parent)
