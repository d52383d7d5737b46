"""Opening the files igvm reads: regular files only, with a size cap where the data is kept.

A device (/dev/zero), a FIFO or a directory would make a command block forever or read without
end, so every path igvm opens (an image to check, dump, measure or diff, a recipe and the files it
names) goes through here and anything but a regular file is refused with a line naming the path.
The open itself is non-blocking, so opening a FIFO with no writer returns at once.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from igvm.errors import IgvmError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class InputFileError(IgvmError):
    """A path igvm was asked to read is not a readable regular file, or is too large."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {problem}")

    def __str__(self) -> str:
        return self.rule

    def __reduce__(self) -> tuple[type[IgvmError], tuple[str, int | None, int | None]]:
        return (IgvmError, (self.rule, None, None))


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open `path` for binary reading; refuse anything but a regular file, without blocking."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except IsADirectoryError as exc:
        raise InputFileError(path, "is a directory, not a regular file") from exc
    except OSError as exc:
        raise InputFileError(path, f"cannot read: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputFileError(path, f"is {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The whole of a regular file of at most `limit` bytes (larger files are refused unread)."""
    with open_regular(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size > limit:
            raise InputFileError(path, f"is {size} bytes, more than the {limit}-byte limit")
        data = stream.read(limit + 1)
    if len(data) > limit:  # grew while being read
        raise InputFileError(path, f"is more than the {limit}-byte limit")
    return data
