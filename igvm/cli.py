"""The `igvm` command line: dump, check, measure, build and diff IGVM files."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from igvm.build import build
from igvm.errors import IgvmError
from igvm.format import ARCH_NAMES, scan
from igvm.headers import PLATFORM_NAMES, AnyHeader, SupportedPlatform
from igvm.measure import VARIANTS, DirectiveMeasurement, measurement_log, mrtd

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_DIFFERENT = 1
# Sequence alignment is quadratic in the worst case; longer logs are compared position by position.
DIFF_ALIGN_LIMIT = 20_000

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


def _opcodes(
    log_a: list[DirectiveMeasurement], log_b: list[DirectiveMeasurement]
) -> list[tuple[str, int, int, int, int]]:
    """Alignment of the two logs; position by position when they are too long to align."""
    if max(len(log_a), len(log_b)) <= DIFF_ALIGN_LIMIT:
        matcher = difflib.SequenceMatcher(
            None, [_key(r) for r in log_a], [_key(r) for r in log_b], autojunk=False
        )
        return [(tag, a0, a1, b0, b1) for tag, a0, a1, b0, b1 in matcher.get_opcodes()]
    opcodes = []
    common = min(len(log_a), len(log_b))
    for position in range(common):
        if _key(log_a[position]) != _key(log_b[position]):
            opcodes.append(("replace", position, position + 1, position, position + 1))
    if len(log_a) > common:
        opcodes.append(("delete", common, len(log_a), common, common))
    if len(log_b) > common:
        opcodes.append(("insert", common, common, common, len(log_b)))
    return opcodes


def _cmd_diff(args: argparse.Namespace, out: TextIO) -> int:
    log_a = list(measurement_log(args.a, args.mask, args.variant))
    log_b = list(measurement_log(args.b, args.mask, args.variant))
    final_a = log_a[-1].mrtd_after if log_a else mrtd(args.a, args.mask, args.variant)
    final_b = log_b[-1].mrtd_after if log_b else mrtd(args.b, args.mask, args.variant)
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
    check = commands.add_parser("check", help="validate FILE; exit 1 naming the broken rule")
    check.add_argument("file")
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


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 1 invalid or different, 2 usage)."""
    args = make_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            result: int = args.handler(args, stream)
            return result
    except IgvmError as exc:
        _print_error(
            exc,
            getattr(args, "file", None) or getattr(args, "recipe", "") or f"{args.a} / {args.b}",
        )
        return EXIT_INVALID
    except OSError as exc:
        print(f"igvm: {exc}", file=sys.stderr)
        return EXIT_INVALID
