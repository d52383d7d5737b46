"""Public test data from other projects, kept beside the repository rather than in it.

Third-party data files are not committed here: they live in the shared folder next to the
checkout (`../shared/testdata/SET/`, or the folder `TDP_PUBLIC_TESTDATA` names), and
`tests/data/SET/PROVENANCE.md` says where each file comes from. A test that needs a set skips,
naming the folder, when the set is not there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = "TDP_PUBLIC_TESTDATA"


def public_dir(name: str) -> Path:
    """Where the public data set `name` is looked for."""
    base = Path(os.environ[ENV]) if os.environ.get(ENV) else ROOT.parent / "shared" / "testdata"
    return base / name


def require(name: str, *files: str) -> Path:
    """The folder of data set `name`, or a skip naming what is missing and where."""
    folder = public_dir(name)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing or not folder.is_dir():
        pytest.skip(
            f"public test data {name!r} not present: {', '.join(missing) or 'folder'} in {folder} "
            f"(see tests/data/{name}/PROVENANCE.md)"
        )
    return folder
