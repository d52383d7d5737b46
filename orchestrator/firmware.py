"""Build l2-firmware with gcc and binutils into a flat, reproducible, relocation-free image.

Reproducible: no debug information, no build IDs, no timestamps, source paths mapped to
`l2-firmware`, sources in sorted order; the same sources give the same bytes wherever the checkout
lives. Position-independent with no relocations at all (the build fails on any), so L1 can load it
at the start of whichever L2's RAM. The result is checked with the same header parser L1 uses.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchestratorError
from svsm.l2image import L2ImageError, L2ImageLayout

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "l2-firmware"
DEFAULT_OUTPUT = ROOT / "out" / "l2-firmware.bin"
TOOLS = ("gcc", "ld", "objcopy", "readelf")
CFLAGS = (
    "-std=gnu11",
    "-O2",
    "-ffreestanding",
    "-fno-builtin",
    "-nostdlib",
    "-fpie",
    "-mno-red-zone",
    "-mgeneral-regs-only",
    "-fno-stack-protector",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-fcf-protection=none",
    "-fno-ident",
    "-fno-common",
    "-Wall",
    "-Wextra",
    "-Werror",
)
LDFLAGS = ("-pie", "--no-dynamic-linker", "-z", "norelro", "-z", "noexecstack", "--build-id=none")
NO_RELOCATIONS = "There are no relocations in this file."
BUILD_TIMEOUT_S = 120


class FirmwareBuildError(OrchestratorError):
    """The firmware did not build; the message names the tool, the file and the compiler's words."""


@dataclass(frozen=True)
class Firmware:
    """A built L2 firmware image and its layout."""

    image: bytes
    layout: L2ImageLayout
    path: Path


def _run(cmd: list[str], cwd: Path) -> str:
    try:
        done = subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
            env={**os.environ, "LC_ALL": "C"},  # readelf's answer is compared as text
        )
    except subprocess.TimeoutExpired as exc:
        raise FirmwareBuildError(f"{cmd[0]} timed out after {BUILD_TIMEOUT_S} s") from exc
    if done.returncode:
        raise FirmwareBuildError(f"{' '.join(cmd)} failed:\n{done.stderr.strip()}")
    return done.stdout


def build_firmware(source_dir: Path = SOURCE_DIR, output: Path = DEFAULT_OUTPUT) -> Firmware:
    """Compile, link and flatten the firmware; write it to `output` and return it."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise FirmwareBuildError(f"l2-firmware needs {', '.join(missing)} (Debian gcc, binutils)")
    sources = sorted((source_dir / "src").glob("*.[cS]"))
    if not sources:
        raise FirmwareBuildError(f"no sources in {source_dir / 'src'}")
    prefix_map = f"-ffile-prefix-map={source_dir.resolve()}=l2-firmware"
    with tempfile.TemporaryDirectory(prefix="l2fw-") as tmp:
        work = Path(tmp)
        objects = []
        for source in sources:
            obj = work / f"{source.name}.o"
            _run(["gcc", *CFLAGS, prefix_map, "-c", str(source), "-o", str(obj)], source_dir)
            objects.append(str(obj))
        elf = work / "l2-firmware.elf"
        script = str(source_dir / "link.ld")
        _run(["ld", *LDFLAGS, "-T", script, "-o", str(elf), *objects], source_dir)
        relocations = _run(["readelf", "-r", str(elf)], source_dir).strip()
        if relocations != NO_RELOCATIONS:
            raise FirmwareBuildError(
                "l2-firmware must link without relocations (it runs at any L2's RAM base); "
                f"readelf -r says:\n{relocations}"
            )
        flat = work / "l2-firmware.bin"
        _run(["objcopy", "-O", "binary", str(elf), str(flat)], source_dir)
        image = flat.read_bytes()
    try:
        layout = L2ImageLayout.parse(image)
    except L2ImageError as exc:
        raise FirmwareBuildError(f"the built image's header does not check: {exc}") from exc
    if not layout.has_header:
        raise FirmwareBuildError(
            "the built image has no TDPL2FW1 header (head.S not linked first?)"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(image)
    return Firmware(image, layout, output)
