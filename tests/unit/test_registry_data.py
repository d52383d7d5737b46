"""The registry test-data step: a pinned source package is unpacked only when its hash matches,
only the members named, and not again once it is there (served here by a loopback index)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.registry_data import RegistryDataError, RegistrySet, materialise


def _archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


ARCHIVE = _archive({"pkg-1.0/sample/quote": b"QUOTE", "pkg-1.0/other": b"not wanted"})


class _Index(http.server.BaseHTTPRequestHandler):
    """A Simple Repository API index with one project and one file, counting downloads."""

    downloads = 0

    def do_GET(self) -> None:
        if self.path == "/simple/pkg/":
            url = f"http://127.0.0.1:{self.server.server_port}/files/pkg-1.0.tar.gz"
            body = json.dumps({"files": [{"filename": "pkg-1.0.tar.gz", "url": url}]}).encode()
        elif self.path == "/files/pkg-1.0.tar.gz":
            type(self).downloads += 1
            body = ARCHIVE
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def index() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Index.downloads = 0
    yield f"http://127.0.0.1:{server.server_port}/simple"
    server.shutdown()
    server.server_close()


def _set(sha256: str, member: str = "pkg-1.0/sample/quote") -> RegistrySet:
    return RegistrySet("demo", "pkg", "pkg-1.0.tar.gz", sha256, {"quote": member})


def test_pinned_package_is_unpacked_once(index: str, tmp_path: Path) -> None:
    pinned = _set(hashlib.sha256(ARCHIVE).hexdigest())
    folder = materialise(pinned, tmp_path, index)
    assert sorted(p.name for p in folder.iterdir()) == [".sha256", "quote"]
    assert (folder / "quote").read_bytes() == b"QUOTE"
    materialise(pinned, tmp_path, index)
    assert _Index.downloads == 1


def test_a_package_that_differs_from_its_pin_is_refused(index: str, tmp_path: Path) -> None:
    with pytest.raises(
        RegistryDataError, match=r"pkg-1\.0\.tar\.gz: SHA-256 .*pinned 0+: refusing"
    ):
        materialise(_set("0" * 64), tmp_path, index)
    assert not (tmp_path / "demo").exists()


def test_a_missing_member_or_file_is_named(index: str, tmp_path: Path) -> None:
    with pytest.raises(RegistryDataError, match=r"no regular file pkg-1\.0/sample/gone"):
        materialise(
            _set(hashlib.sha256(ARCHIVE).hexdigest(), "pkg-1.0/sample/gone"), tmp_path, index
        )
    other = RegistrySet("demo", "absent", "absent-1.0.tar.gz", "0" * 64, {})
    with pytest.raises(RegistryDataError, match="absent/: cannot read the project page"):
        materialise(other, tmp_path, index)
