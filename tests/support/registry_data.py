"""Public test data that a package on PyPI ships, unpacked into `build/testdata/SET/`.

Some public data sets travel inside a registry package: dcap-qvl's source distribution carries the
real Intel TDX quotes and collateral of its own tests (`sample/`). This module downloads that one
pinned file from the package index by name (the Simple Repository API, PEP 503/691), checks its
SHA-256 against the pin below, and writes only the listed members, so the tests that need the set
run on a clean machine without anything from outside the registries committed here.
`tests/data/SET/PROVENANCE.md` says what each file is.

    python -m tests.support.registry_data      # idempotent; one line per set
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEST = ROOT / "build" / "testdata"
DEFAULT_INDEX = "https://pypi.org/simple"
JSON_SIMPLE = "application/vnd.pypi.simple.v1+json"
MAX_ARCHIVE = 8 << 20


class RegistryDataError(Exception):
    """A registry data set could not be fetched or did not match its pin."""


@dataclass(frozen=True)
class RegistrySet:
    """One data set: the distribution file that carries it, pinned by hash, and what to keep."""

    name: str
    project: str
    filename: str
    sha256: str
    members: Mapping[str, str]  # file in the set -> member path in the archive


SETS = (
    RegistrySet(
        name="intel-dcap",
        project="dcap-qvl",
        filename="dcap_qvl-0.7.0.tar.gz",
        sha256="f1c442dc494a6a3ccfff587dfa22ea3a7459c90d940a3dd20d234332a025ed03",
        members={
            "tdx_quote": "dcap_qvl-0.7.0/sample/tdx_quote",
            "tdx_quote_collateral.json": "dcap_qvl-0.7.0/sample/tdx_quote_collateral.json",
            "tdx_quote_outdated": "dcap_qvl-0.7.0/sample/tdx_quote_outdated",
            "tdx_quote_outdated_collateral.json": (
                "dcap_qvl-0.7.0/sample/tdx_quote_outdated_collateral.json"
            ),
            "tdx_quote_td15ex": "dcap_qvl-0.7.0/sample/tdx_quote_td15ex",
            "tdx_quote_td15ex_collateral.json": (
                "dcap_qvl-0.7.0/sample/tdx_quote_td15ex_collateral.json"
            ),
            "LICENSE.dcap-qvl": "dcap_qvl-0.7.0/LICENSE",
        },
    ),
)


def _index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", DEFAULT_INDEX).rstrip("/")


def _file_url(data_set: RegistrySet, index: str) -> str:
    """The download URL of the pinned file, from the index's JSON project page (PEP 691)."""
    page = f"{index}/{data_set.project}/"
    request = urllib.request.Request(page, headers={"Accept": JSON_SIMPLE})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            listing = json.load(response)
    except (OSError, ValueError) as exc:
        raise RegistryDataError(f"{page}: cannot read the project page: {exc}") from exc
    for entry in listing.get("files", ()):
        if entry.get("filename") == data_set.filename:
            return urllib.parse.urljoin(page, str(entry["url"]))  # PEP 691 allows relative URLs
    raise RegistryDataError(f"{page}: no file {data_set.filename}")


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data: bytes = response.read(MAX_ARCHIVE + 1)
    except OSError as exc:
        raise RegistryDataError(f"{url}: download failed: {exc}") from exc
    if len(data) > MAX_ARCHIVE:
        raise RegistryDataError(f"{url}: larger than {MAX_ARCHIVE} bytes")
    return data


def _present(data_set: RegistrySet, folder: Path) -> bool:
    stamp = folder / ".sha256"
    return (
        stamp.is_file()
        and stamp.read_text().strip() == data_set.sha256
        and all((folder / name).is_file() for name in data_set.members)
    )


def materialise(data_set: RegistrySet, dest: Path = DEST, index: str | None = None) -> Path:
    """Unpack `data_set` into dest/NAME unless it is already there; returns that folder."""
    folder = dest / data_set.name
    if _present(data_set, folder):
        return folder
    archive = _download(_file_url(data_set, index or _index_url()))
    digest = hashlib.sha256(archive).hexdigest()
    if digest != data_set.sha256:
        raise RegistryDataError(
            f"{data_set.filename}: SHA-256 {digest}, pinned {data_set.sha256}: refusing it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for name, member in data_set.members.items():
            try:
                extracted = tar.extractfile(member)
            except KeyError:
                extracted = None
            if extracted is None:
                raise RegistryDataError(f"{data_set.filename}: no regular file {member}")
            (folder / name).write_bytes(extracted.read())
    (folder / ".sha256").write_text(data_set.sha256 + "\n")
    return folder


def main() -> int:
    """Unpack every set; a failure is reported and the tests that need that set skip."""
    failed = 0
    for data_set in SETS:
        try:
            folder = materialise(data_set)
        except RegistryDataError as exc:
            print(f"test data: {data_set.name}: not available: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"test data: {data_set.name} from {data_set.filename} in {folder}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
