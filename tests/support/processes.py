"""Process checks through /proc: a process's children, and whether a pid still runs code."""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status:
            found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        below = [child for parent in frontier for child in children(parent)]
        found += below
        frontier = below
    return found


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie runs no code)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
