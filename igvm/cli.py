"""The `igvm` command line: dump, check, measure, build and diff IGVM files."""

from __future__ import annotations

import argparse
import bisect
import json
import sys
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from igvm.build import build
from igvm.errors import IgvmError, IgvmFinding, IgvmWarning
from igvm.format import ARCH_NAMES, scan
from igvm.headers import PLATFORM_NAMES, AnyHeader, SupportedPlatform
from igvm.measure import VARIANTS, DirectiveMeasurement, measurement_log, mrtd

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_DIFFERENT = 1

MEASURE_HELP = """\
Print the TDX launch measurement (MRTD, 96 hex digits) a TDX host produces loading FILE.

Variants:
  igvm     (default) The mapping of microsoft/igvm's generate_tdx_measurement, also used by
           OpenVMM and MigTD: directives in file order, only those whose compatibility mask
           includes the TDX mask; shared pages skipped; unmeasured pages PAGE.ADD only; a
           measured zero page is PAGE.ADD + 16 MR.EXTENDs of zeros; every 4 KiB page of a
           parameter insert is PAGE.ADD only.
  td-shim  td-shim's build_igvmmrtd: compatibility masks are ignored (all PAGE_DATA count),
           parameter inserts are ignored, and a page without file data (a zero page) gets
           PAGE.ADD only, never MR.EXTEND. It differs from the default whenever the file has a
           measured zero page, a parameter insert, or headers for other platforms.
The file is streamed: memory use does not grow with its size."""


def _print_error(exc: IgvmError, path: str) -> None:
    print(f"{path}: invalid IGVM: {exc}", file=sys.stderr)


class InputError(IgvmError):
    """An IgvmError or OSError for one named input (diff reads two)."""

    def __init__(self, path: str, error: IgvmError | OSError) -> None:
        self.path = path
        self.error = error
        super().__init__(f"{path}: {error}")


@dataclass
class WarningTally:
    """Warnings counted by kind, so a file with a million odd headers prints one line per kind.

    `current` names the input being read (diff reads two); warnings are counted per input.
    """

    counts: Counter[tuple[str, bool, str]] = field(default_factory=Counter)
    first: dict[tuple[str, bool, str], str] = field(default_factory=dict)
    current: str = ""

    def record(self, message: Warning | str, *_args: Any, **_kwargs: Any) -> None:
        """A `warnings.showwarning` replacement: count instead of print."""
        if isinstance(message, IgvmWarning):
            key = (self.current, isinstance(message, IgvmFinding), message.kind)
            where = ", ".join(
                part
                for part in (
                    None if message.header_index is None else f"header {message.header_index}",
                    None if message.offset is None else f"file offset {message.offset:#x}",
                )
                if part
            )
        else:
            key = (self.current, False, str(message))
            where = ""
        self.counts[key] += 1
        self.first.setdefault(key, where)

    @property
    def findings(self) -> int:
        return sum(count for (_label, finding, _kind), count in self.counts.items() if finding)

    def report(self, *, findings: bool) -> None:
        """One line per input and kind on stderr; findings only when asked (check --strict)."""
        for (label, finding, kind), count in self.counts.items():
            if finding and not findings:
                continue
            where = self.first[(label, finding, kind)]
            times = "once" if count == 1 else f"{count} times"
            print(
                f"{label}: {'finding' if finding else 'warning'}: {kind} ({times}"
                + (f"; first at {where})" if where else ")"),
                file=sys.stderr,
            )


def _cmd_dump(args: argparse.Namespace, out: TextIO) -> int:
    with scan(args.file) as opened:
        fixed = opened.fixed
        if args.json:
            headers: list[dict[str, Any]] = [h.to_json() for h in opened.platforms]
            headers += [h.to_json() for h in opened.initializations]
            headers += [h.to_json() for h in opened.directives()]
            json.dump(
                {
                    "format_version": fixed.format_version,
                    "architecture": ARCH_NAMES[fixed.architecture],
                    "variable_header_offset": fixed.variable_header_offset,
                    "variable_header_size": fixed.variable_header_size,
                    "total_file_size": fixed.total_file_size,
                    "checksum": f"{fixed.checksum:#010x}",
                    "headers": headers,
                },
                out,
                indent=2,
            )
            out.write("\n")
            return EXIT_OK
        out.write(
            f"IGVM v{fixed.format_version} {ARCH_NAMES[fixed.architecture]}, "
            f"{fixed.total_file_size} bytes, variable headers "
            f"{fixed.variable_header_size} bytes at {fixed.variable_header_offset:#x}, "
            f"CRC-32 {fixed.checksum:#010x}\n"
        )
        index = 0
        sections: list[tuple[str, list[AnyHeader]]] = [
            ("platform", list(opened.platforms)),
            ("initialization", list(opened.initializations)),
        ]
        for section, items in sections:
            out.write(f"[{section}]\n")
            for header in items:
                extra = ""
                if isinstance(header, SupportedPlatform):
                    extra = f"  ({PLATFORM_NAMES.get(header.platform_type, '?')})"
                out.write(f"  #{index}: {header.describe()}{extra}\n")
                index += 1
        out.write("[directive]\n")
        for number, _offset, header in opened.indexed_directives():
            out.write(f"  #{number}: {header.describe()}\n")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    count = 0
    with scan(args.file) as opened:
        count = len(opened.platforms) + len(opened.initializations)
        count += sum(1 for _ in opened.indexed_directives())
    findings = args.tally.findings
    if args.strict and findings:
        out.write(
            f"{args.file}: valid IGVM ({count} headers) for loaders, but not strictly: "
            f"{findings} finding(s)\n"
        )
        return EXIT_INVALID
    out.write(f"{args.file}: valid IGVM ({count} headers)\n")
    return EXIT_OK


def _cmd_measure(args: argparse.Namespace, out: TextIO) -> int:
    digest = mrtd(args.file, args.mask, args.variant)
    if args.json:
        json.dump(
            {"file": args.file, "variant": args.variant, "mask": args.mask, "mrtd": digest.hex()},
            out,
        )
        out.write("\n")
    else:
        out.write(digest.hex() + "\n")
    return EXIT_OK


def _cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    digest = build(args.recipe, args.output)
    out.write(f"wrote {args.output}\nMRTD {digest.hex()}\n")
    return EXIT_OK


def _key(record: DirectiveMeasurement) -> tuple[str, bytes]:
    return (record.description, record.contribution)


def _effect(record: DirectiveMeasurement) -> str:
    if not record.contribution:
        return f"no MRTD effect ({record.note})"
    return (
        f"MRTD input {record.page_adds} PAGE.ADD + {record.extends} MR.EXTEND, "
        f"digest {record.contribution.hex()[:16]}... ({record.note})"
    )


def _anchors(keys_a: list[Any], keys_b: list[Any]) -> list[tuple[int, int]]:
    """Pairs (i, j) of entries unique in both logs with equal keys, longest increasing run.

    Patience alignment: the unique matches, then a longest increasing subsequence of their B
    positions (O(n log n) with bisect) keeps the most matches that stay in order.
    """
    count_a = Counter(keys_a)
    count_b = Counter(keys_b)
    where_b = {key: j for j, key in enumerate(keys_b) if count_b[key] == 1}
    pairs = [
        (i, where_b[key]) for i, key in enumerate(keys_a) if count_a[key] == 1 and key in where_b
    ]
    tails: list[int] = []  # tails[k]: smallest B position ending an increasing run of k+1
    tail_at: list[int] = []  # index into pairs of that tail
    previous: list[int] = [-1] * len(pairs)
    for number, (_i, j) in enumerate(pairs):
        slot = bisect.bisect_left(tails, j)
        if slot == len(tails):
            tails.append(j)
            tail_at.append(number)
        else:
            tails[slot] = j
            tail_at[slot] = number
        previous[number] = tail_at[slot - 1] if slot else -1
    chain: list[tuple[int, int]] = []
    number = tail_at[-1] if tail_at else -1
    while number >= 0:
        chain.append(pairs[number])
        number = previous[number]
    chain.reverse()
    return chain


def _gap_opcodes(
    keys_a: list[Any], keys_b: list[Any], a0: int, a1: int, b0: int, b1: int
) -> Iterator[tuple[str, int, int, int, int]]:
    """Opcodes for an unaligned stretch: equal prefix and suffix, the rest replaced."""
    while a0 < a1 and b0 < b1 and keys_a[a0] == keys_b[b0]:
        yield ("equal", a0, a0 + 1, b0, b0 + 1)
        a0, b0 = a0 + 1, b0 + 1
    tail: list[tuple[str, int, int, int, int]] = []
    while a1 > a0 and b1 > b0 and keys_a[a1 - 1] == keys_b[b1 - 1]:
        tail.append(("equal", a1 - 1, a1, b1 - 1, b1))
        a1, b1 = a1 - 1, b1 - 1
    common = min(a1 - a0, b1 - b0)
    if common:
        yield ("replace", a0, a0 + common, b0, b0 + common)
    if a1 - a0 > common:
        yield ("delete", a0 + common, a1, b0 + common, b0 + common)
    if b1 - b0 > common:
        yield ("insert", a0 + common, a0 + common, b0 + common, b1)
    yield from reversed(tail)


def _opcodes(
    log_a: list[DirectiveMeasurement], log_b: list[DirectiveMeasurement]
) -> list[tuple[str, int, int, int, int]]:
    """Alignment of the two logs in O(n log n): patience anchors, then each gap in between."""
    keys_a = [_key(r) for r in log_a]
    keys_b = [_key(r) for r in log_b]
    opcodes: list[tuple[str, int, int, int, int]] = []
    a0 = b0 = 0
    for i, j in [*_anchors(keys_a, keys_b), (len(keys_a), len(keys_b))]:
        opcodes.extend(_gap_opcodes(keys_a, keys_b, a0, i, b0, j))
        if i < len(keys_a):
            opcodes.append(("equal", i, i + 1, j, j + 1))
        a0, b0 = i + 1, j + 1
    return opcodes


def _log(
    path: str, mask: int | None, variant: str, tally: WarningTally
) -> tuple[list[DirectiveMeasurement], bytes]:
    """One side of a diff: its measurement log and MRTD; errors and warnings name the file."""
    tally.current = path
    try:
        log = list(measurement_log(path, mask, variant, running=False))
        final = log[-1].mrtd_after if log else mrtd(path, mask, variant)
    except (IgvmError, OSError) as exc:
        raise InputError(path, exc) from exc
    return log, final


def _cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    log_a, final_a = _log(args.a, args.mask, args.variant, args.tally)
    log_b, final_b = _log(args.b, args.mask, args.variant, args.tally)
    out.write(f"A {args.a}: MRTD {final_a.hex()}\nB {args.b}: MRTD {final_b.hex()}\n")
    measured_a = [r for r in log_a if r.contribution]
    measured_b = [r for r in log_b if r.contribution]
    for step, (ra, rb) in enumerate(zip(measured_a, measured_b, strict=False)):
        if ra.contribution != rb.contribution:
            out.write(
                f"MRTD input diverges at measured step {step}: A directive #{ra.index} "
                f"{ra.description} vs B directive #{rb.index} {rb.description}\n"
            )
            break
    else:
        if len(measured_a) != len(measured_b):
            shorter = min(len(measured_a), len(measured_b))
            longer = measured_a if len(measured_a) > shorter else measured_b
            out.write(
                f"MRTD input diverges after {shorter} measured steps: "
                f"{'A' if longer is measured_a else 'B'} goes on with directive "
                f"#{longer[shorter].index} {longer[shorter].description}\n"
            )
    differing = 0
    for tag, a0, a1, b0, b1 in _opcodes(log_a, log_b):
        if tag == "equal":
            continue
        for record in log_a[a0:a1]:
            differing += 1
            label = "changed" if tag == "replace" else "only in A"
            out.write(
                f"- A #{record.index} [{label}] {record.description}\n    {_effect(record)}\n"
            )
        for record in log_b[b0:b1]:
            label = "changed" if tag == "replace" else "only in B"
            differing += 1 if tag == "insert" else 0
            out.write(
                f"+ B #{record.index} [{label}] {record.description}\n    {_effect(record)}\n"
            )
    if differing == 0:
        out.write("directives are identical\n")
    out.write("MRTD " + ("matches" if final_a == final_b else "differs") + "\n")
    return EXIT_OK if final_a == final_b and differing == 0 else EXIT_DIFFERENT


def _mask(text: str) -> int:
    value = int(text, 0)
    if not 0 < value <= 0xFFFF_FFFF:
        raise argparse.ArgumentTypeError(f"mask {text} must be a non-zero u32")
    return value


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igvm", description="Read, check, measure (TDX MRTD), build and compare IGVM files."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    dump = commands.add_parser("dump", help="print every header of FILE")
    dump.add_argument("file")
    dump.add_argument("--json", action="store_true", help="machine-readable output")
    dump.set_defaults(handler=_cmd_dump)
    check = commands.add_parser(
        "check",
        help="validate FILE; exit 1 naming the broken rule",
        description="Validate FILE as a loader would, plus what a TDX host refuses at load time "
        "(private pages at or above the shared-GPA boundary, a GPA added twice, areas past the "
        "address space). Exit 1 naming the broken rule, header index and file offset.",
    )
    check.add_argument("file")
    check.add_argument(
        "--strict",
        action="store_true",
        help="also report, as findings, what loaders accept but the specification forbids "
        "(non-zero header padding, as Microsoft's igvm-tooling writes); exit 1 if any",
    )
    check.set_defaults(handler=_cmd_check)
    measure = commands.add_parser(
        "measure",
        help="print the TDX MRTD of FILE",
        description=MEASURE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    measure.add_argument("file")
    measure.add_argument(
        "--mask",
        type=_mask,
        default=None,
        help="compatibility mask to measure for (default: the TDX platform's)",
    )
    measure.add_argument(
        "--variant",
        choices=VARIANTS,
        default="igvm",
        help="measurement mapping (see above; default igvm)",
    )
    measure.add_argument("--json", action="store_true", help="print a JSON object")
    measure.set_defaults(handler=_cmd_measure)
    build_cmd = commands.add_parser("build", help="build an image from a YAML recipe")
    build_cmd.add_argument("recipe")
    build_cmd.add_argument("-o", "--output", required=True)
    build_cmd.set_defaults(handler=_cmd_build)
    diff = commands.add_parser(
        "diff",
        help="which directives differ between A and B and how that changes MRTD",
        description="Walk both measurement logs, report where the MRTD input first diverges "
        "and every directive that differs, with its MRTD effect. Exit 1 if they "
        "differ.",
    )
    diff.add_argument("a")
    diff.add_argument("b")
    diff.add_argument("--mask", type=_mask, default=None)
    diff.add_argument("--variant", choices=VARIANTS, default="igvm")
    diff.set_defaults(handler=_cmd_diff)
    return parser


def _label(args: argparse.Namespace) -> str:
    """The input an error or warning is about: the file, the recipe, or both diff inputs."""
    if getattr(args, "file", None):
        return str(args.file)
    if getattr(args, "recipe", None):
        return str(args.recipe)
    return f"{args.a} / {args.b}"


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 invalid or different, 2 usage)."""
    args = make_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    tally = WarningTally(current=_label(args))
    args.tally = tally
    label = _label(args)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = tally.record
            result: int = args.handler(args, stream)
            return result
    except InputError as exc:
        if isinstance(exc.error, IgvmError):
            _print_error(exc.error, exc.path)
        else:
            print(f"igvm: {exc.path}: {exc.error.strerror or exc.error}", file=sys.stderr)
        return EXIT_INVALID
    except IgvmError as exc:
        _print_error(exc, label)
        return EXIT_INVALID
    except OSError as exc:
        print(f"igvm: {exc.filename or label}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_INVALID
    finally:
        tally.report(findings=getattr(args, "strict", False))
