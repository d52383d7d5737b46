"""The page-alias manager: L1's one owner of every L2's view of private memory.

An L2 sees a private page only through an alias L1 creates with TDG.MEM.PAGE.ATTR.WR (Intel TDX
Module TD Partitioning Architecture Specification, "L2 page aliases"; GPA_ATTR and ATTR_FLAGS are
four 16-bit words, VM0..VM3). Aliases are identity-mapped, so L1 only chooses whether a page is
visible to each L2 and with which of R, W and supervisor-execute. This module keeps L1's record of
every alias it made, refuses W+X, refuses any alias of a page L1 declared its own (paravisor code
and data, vTPM state, page tables, guest-state blocks), retries TDX_OPERAND_BUSY a bounded number of
times, and prints the GPA x VM permission map (`invoke run --show-aliases`).
"""

from __future__ import annotations

from dataclasses import dataclass

from svsm.errors import SvsmError
from svsm.tdcall import Tdcall, TdcallError
from tdxdefs.attributes import GpaAttr, pack_attr
from tdxdefs.tdcall import (
    PAGE_SIZE,
    RAX,
    RDX,
    TDX_OPERAND_BUSY,
    Leaf,
    is_error,
    status_class,
)

ACCESS = GpaAttr.R | GpaAttr.W | GpaAttr.XS
BUSY_RETRIES = 16  # a module that stays busy is an error, not a hang
NO_ACCESS = GpaAttr(0)


class AliasError(SvsmError):
    """An alias L1 must not make, or that the module refused; names the GPA and the VM."""


@dataclass(frozen=True)
class L1Region:
    """A range of private memory that is L1's alone."""

    gpa: int
    size: int
    what: str

    def __contains__(self, gpa: object) -> bool:
        return isinstance(gpa, int) and self.gpa <= gpa < self.gpa + self.size


@dataclass
class AliasRun:
    """GPAs [start, end) with the same permissions in every VM (`row`, VM1 first)."""

    start: int
    end: int
    row: tuple[GpaAttr, ...]
    what: str


def _pages(gpa: int, size: int) -> range:
    if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
        raise AliasError(f"alias range {gpa:#x} (+{size:#x}) is not whole pages")
    return range(gpa, gpa + size, PAGE_SIZE)


def _flags(attrs: GpaAttr) -> str:
    return "".join(
        letter if attrs & bit else "-"
        for letter, bit in (("R", GpaAttr.R), ("W", GpaAttr.W), ("X", GpaAttr.XS))
    )


class AliasManager:
    """Every alias of every L2, made and recorded here only."""

    def __init__(self, tdcall: Tdcall, num_l2_vms: int) -> None:
        self.tdcall = tdcall
        self.num_l2_vms = num_l2_vms
        self.l1_only: list[L1Region] = []
        self.labels: dict[int, str] = {}
        self._views: dict[int, dict[int, GpaAttr]] = {vm: {} for vm in range(1, num_l2_vms + 1)}
        self.writes = 0
        self.busy_retries = 0
        self.generation = 0  # changes with every grant or revoke: what was checked may be stale

    def reserve(self, gpa: int, size: int, what: str) -> None:
        """Declare [gpa, gpa+size) L1's own: no L2 will ever get an alias of it."""
        for page in _pages(gpa, size):
            for vm, view in self._views.items():
                if page in view:
                    raise AliasError(f"{what} at GPA {page:#x} is already aliased into L2 VM {vm}")
        self.l1_only.append(L1Region(gpa, size, what))

    def owner(self, gpa: int) -> L1Region | None:
        """The L1-only region holding `gpa`, if any."""
        return next((r for r in self.l1_only if gpa in r), None)

    def grant(self, vm: int, gpa: int, size: int, attrs: GpaAttr, label: str = "") -> None:
        """Alias [gpa, gpa+size) into VM `vm` with `attrs` (R, W, XS; never W and X together)."""
        self._check_vm(vm)
        if attrs & GpaAttr.W and attrs & GpaAttr.XS:
            raise AliasError(f"W+X alias refused for L2 VM {vm} at GPA {gpa:#x}")
        if attrs & ~ACCESS:
            raise AliasError(f"alias attributes {int(attrs):#x} beyond R/W/X at GPA {gpa:#x}")
        pages = _pages(gpa, size)
        for page in pages:  # every page is checked before any is written: all or nothing
            region = self.owner(page)
            if region is not None:
                raise AliasError(f"GPA {page:#x} is L1's ({region.what}): no alias for L2 VM {vm}")
        for page in pages:
            self._write(vm, page, attrs)
            self._views[vm][page] = attrs
            self.generation += 1
            if label:
                self.labels[page] = label

    def revoke(self, vm: int, gpa: int, size: int) -> None:
        """Remove VM `vm`'s alias of [gpa, gpa+size) (VALID with no access bits frees it)."""
        self._check_vm(vm)
        for page in _pages(gpa, size):
            self._write(vm, page, NO_ACCESS)
            self._views[vm].pop(page, None)
            self.generation += 1

    def attrs(self, vm: int, gpa: int) -> GpaAttr:
        """What VM `vm` may do at `gpa`, by L1's record."""
        return self._views.get(vm, {}).get(gpa - gpa % PAGE_SIZE, NO_ACCESS)

    def _check_vm(self, vm: int) -> None:
        if vm not in self._views:
            raise AliasError(f"L2 VM {vm} does not exist (NUM_L2_VMS = {self.num_l2_vms})")

    def _write(self, vm: int, page: int, attrs: GpaAttr) -> None:
        words = {vm: int(attrs | GpaAttr.VALID)}
        mask = {vm: int(ACCESS)}
        for _attempt in range(BUSY_RETRIES + 1):
            out = self.tdcall.raw(
                Leaf.MEM_PAGE_ATTR_WR, rcx=page, rdx=pack_attr(words), r8=pack_attr(mask)
            )
            self.writes += 1
            if status_class(out[RAX]) == TDX_OPERAND_BUSY:
                self.busy_retries += 1
                continue
            if is_error(out[RAX]):
                raise AliasError(
                    f"TDG.MEM.PAGE.ATTR.WR of GPA {page:#x} for L2 VM {vm} failed "
                    f"(RDX after: {out[RDX]:#018x})"
                ) from TdcallError(Leaf.MEM_PAGE_ATTR_WR, out[RAX])
            return
        raise AliasError(
            f"TDG.MEM.PAGE.ATTR.WR of GPA {page:#x} for L2 VM {vm}: still TDX_OPERAND_BUSY "
            f"after {BUSY_RETRIES} retries"
        )

    def runs(self) -> list[AliasRun]:
        """Contiguous GPA runs alike in every VM, lowest GPA first."""
        pages = set(self._l1_pages())
        for view in self._views.values():
            pages |= view.keys()
        runs: list[AliasRun] = []
        for page in sorted(pages):
            row = tuple(self.attrs(vm, page) for vm in self._views)
            region = self.owner(page)
            what = f"{region.what} (L1 only)" if region else self.labels.get(page, "")
            last = runs[-1] if runs else None
            if last is not None and last.end == page and last.row == row and last.what == what:
                last.end = page + PAGE_SIZE
            else:
                runs.append(AliasRun(page, page + PAGE_SIZE, row, what))
        return runs

    def _l1_pages(self) -> set[int]:
        return {page for r in self.l1_only for page in range(r.gpa, r.gpa + r.size, PAGE_SIZE)}

    def table(self) -> list[str]:
        """The GPA x VM permission map, one line per run (L1 always has full access)."""
        vms = list(self._views)
        header = f"{'GPA range':<27} {'L1':<4}" + "".join(f" {'L2 VM ' + str(v):<8}" for v in vms)
        lines = [header + " what"]
        for run in self.runs():
            cells = "".join(f" {_flags(a):<8}" for a in run.row)
            line = f"{run.start:#012x}-{run.end - 1:#012x}  {'RWX':<4}{cells} {run.what}"
            lines.append(line.rstrip())
        return lines
