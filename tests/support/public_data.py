"""Public test data from other projects, kept beside the repository rather than in it.

Third-party data files are not committed here: they live in the shared folder next to the
checkout (`../shared/testdata/SET/`, or the folder `TDP_PUBLIC_TESTDATA` names), or, for a set
that a registry package ships, in `build/testdata/SET/` where `invoke test` unpacks it
(`tests/support/registry_data.py`). `tests/data/SET/PROVENANCE.md` says where each file comes
from. A test that needs a set skips, naming the folders, when the set is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = "TDP_PUBLIC_TESTDATA"


def public_dirs(name: str) -> tuple[Path, ...]:
    """Where the public data set `name` is looked for, in order."""
    shared = Path(os.environ[ENV]) if os.environ.get(ENV) else ROOT.parent / "shared" / "testdata"
    return (shared / name, ROOT / "build" / "testdata" / name)


def require(name: str, *files: str) -> Path:
    """The first folder holding every file of data set `name`, or a skip naming what is missing
    and where it was looked for."""
    folders = public_dirs(name)
    for folder in folders:
        if folder.is_dir() and all((folder / f).is_file() for f in files):
            return folder
    pytest.skip(
        f"public test data {name!r} not present: {', '.join(files) or 'folder'} in "
        f"{' or '.join(map(str, folders))} (see tests/data/{name}/PROVENANCE.md)"
    )
