"""Build an IgvmFile from a validated recipe (see igvm.recipe for the schema)."""

from __future__ import annotations

import os
from pathlib import Path

from igvm.format import IgvmFile
from igvm.headers import (
    IGVM_PAGE_FLAG_SHARED,
    IGVM_PAGE_FLAG_UNMEASURED,
    IGVM_PLATFORM_TDX,
    PAGE_SIZE,
    DirectiveHeader,
    GuestPolicy,
    InitializationHeader,
    PageData,
    ParameterArea,
    ParameterInsert,
    SupportedPlatform,
)
from igvm.measure import mrtd
from igvm.recipe import Component, Recipe, load_recipe
from igvm.writer import serialize


def _pages(component: Component, mask: int) -> list[PageData]:
    flags = 0
    if component.shared:
        flags |= IGVM_PAGE_FLAG_SHARED
    elif not component.measured:
        flags |= IGVM_PAGE_FLAG_UNMEASURED
    pages = []
    for offset in range(0, component.size, PAGE_SIZE):
        chunk = component.page(offset)
        # An all-zero page needs no file data: a zero page measures the same (igvm variant).
        data = chunk if chunk.strip(b"\0") else b""
        pages.append(PageData(component.gpa + offset, mask, flags, component.data_type, data))
    return pages


def build_image(recipe: Recipe) -> IgvmFile:
    """The IGVM image a recipe describes: TDX platform, optional policy, areas, pages, inserts."""
    mask = recipe.compatibility_mask
    platform = SupportedPlatform(
        mask, recipe.highest_vtl, IGVM_PLATFORM_TDX, shared_gpa_boundary=recipe.shared_gpa_boundary
    )
    initializations: list[InitializationHeader] = []
    if recipe.policy is not None:
        initializations.append(GuestPolicy(recipe.policy, mask))
    directives: list[DirectiveHeader] = []
    for area in recipe.parameter_areas:
        directives.append(ParameterArea(area.size, area.index))
        directives.extend(p.kind(area.index, p.offset) for p in area.parameters)
    for component in recipe.components:
        directives.extend(_pages(component, mask))
    directives.extend(
        ParameterInsert(area.gpa, mask, area.index) for area in recipe.parameter_areas
    )
    return IgvmFile([platform], initializations, directives)


def build(recipe_path: str | os.PathLike[str], output: str | os.PathLike[str]) -> bytes:
    """Build the recipe into `output` and return the image's MRTD."""
    image = build_image(load_recipe(Path(recipe_path)))
    raw = serialize(image)
    Path(output).write_bytes(raw)
    return mrtd(image)
