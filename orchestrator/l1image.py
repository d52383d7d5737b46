"""The product's L1 image: svsm, vtpm and tdxdefs as precompiled bytecode in a deterministic zip.

The TD process imports L1 from the measured zip, and so does every vTPM worker launcher; compiling
the sources there cost about 140 ms per process at every boot. So the zip carries `name.pyc` for
each `name.py` (zipimport imports a `.pyc` at the place of its source), compiled by this
interpreter as a hash-based pyc that is not checked against a source (PEP 552, Python
`py_compile`'s UNCHECKED_HASH mode). It has no timestamp, so the same sources give the same bytes
and the same MRTD; the SipHash of the source in its header changes whenever one character of the
source does (a comment included), so MRTD does too. The sources are left out: what runs is exactly
what is measured, and each page of the image costs a PAGE.ADD and 16 MR.EXTENDs at TD build.
Tracebacks name file and line (as `svsm/boot.py`) without the source text.

The bytecode is compiled in a fresh `python -I -S -X no_debug_ranges` (PEP 657's column tables
left out, a quarter of the size), so the bytes do not depend on the builder's process state. The
TD process must run the same interpreter version: another one refuses the `.pyc` by its magic
number and the import fails naming the module.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from orchestrator.errors import LocalBootError
from tdxsim.host.l1_image import L1Image, package_files, zip_entries

COMPILE_TIMEOUT_S = 120.0
LENGTH_BYTES = 4
# stdin: NUL-separated (name, path) pairs; stdout: per file, its 4-byte length and its pyc bytes.
COMPILER = """
import importlib.util, marshal, sys
fields = sys.stdin.buffer.read().split(b"\\0")
out = sys.stdout.buffer
for name, path in zip(fields[0::2], fields[1::2]):
    with open(path, "rb") as f:
        source = f.read()
    try:
        code = compile(source, name.decode(), "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError) as exc:
        sys.exit(f"{path.decode()} does not compile: {exc}")
    pyc = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")  # PEP 552: unchecked hash
    pyc += importlib.util.source_hash(source) + marshal.dumps(code)
    out.write(len(pyc).to_bytes(4, "little") + pyc)
"""


class L1ImageSourceError(LocalBootError):
    """A package that cannot go into the L1 image (names the path and why)."""


def compile_unchecked(sources: list[tuple[str, Path]]) -> list[bytes]:
    """The unchecked-hash pyc of each (name, source file), from a fresh isolated interpreter;
    `name` becomes the code's file name."""
    request = b"\0".join(
        part for name, path in sources for part in (name.encode(), str(path).encode())
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "no_debug_ranges", "-c", COMPILER],
        input=request,
        capture_output=True,
        timeout=COMPILE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip() or f"status {done.returncode}"
        raise L1ImageSourceError(f"compiling the L1 image's bytecode failed: {why}")
    out, at, pycs = done.stdout, 0, []
    while at < len(out):
        size = int.from_bytes(out[at : at + LENGTH_BYTES], "little")
        pycs.append(out[at + LENGTH_BYTES : at + LENGTH_BYTES + size])
        at += LENGTH_BYTES + size
    if len(pycs) != len(sources):
        raise L1ImageSourceError(f"the compiler returned {len(pycs)} of {len(sources)} modules")
    return pycs


def zip_bytecode(packages: list[Path]) -> bytes:
    """A deterministic zip (tdxsim.host.l1_image's) of the packages with each `.py` replaced by
    its `.pyc`; other files as they are."""
    try:
        files = package_files(packages)
    except ValueError as exc:
        raise L1ImageSourceError(str(exc)) from exc
    sources = [(name, path) for name, path in files if path.suffix == ".py"]
    compiled = dict(zip((name for name, _ in sources), compile_unchecked(sources), strict=True))
    return zip_entries(
        (name + "c", compiled[name]) if name in compiled else (name, path.read_bytes())
        for name, path in files
    )


def build_l1_image(packages: list[Path], entry: str) -> bytes:
    """The L1 image bytes (tdxsim.host.l1_image's header, then this zip) for packages and entry."""
    return L1Image(entry, zip_bytecode(packages)).pack()
