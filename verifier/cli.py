"""`python -m verifier`: check TD evidence offline from files.

  quote QUOTE [--root R] [--collateral C]  verify a TD quote (v4/v5) to a root, with collateral
        [--at T] [--accept S,...]          its TCB status; one line per step
  eventlog LOG [--table T] [--quote Q]    list a CC event log's records, replay RTMR0..3 and
                                          compare them with a TD quote's
  reference IMAGE.igvm [--json] ...       the values a relying party pins for a built image

Exit status: 0 when the check holds, 1 when it does not or the input is malformed (the message
names the RTMR, field or offset), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from igvm.errors import IgvmError
from tdxdefs.quote import (
    TdQuoteBody15,
    TdQuoteBody15Ex,
)
from verifier import eventlog
from verifier.appraisal import DEFAULT_ACCEPTED, Appraisal, appraise
from verifier.collateral import Collateral, parse_time
from verifier.errors import VerificationError
from verifier.eventlog import EventLog
from verifier.quote import parse_quote
from verifier.reference import (
    LOCAL_BACKEND_RAM,
    LOCAL_BACKEND_VCPUS,
    ReferenceValues,
    reference_values,
)
from verifier.tcb import TcbStatus
from verifier.td_attestation import OID_EVENT_LOG, ca_extension
from verifier.trust_anchors import ROOT_INTEL, ROOT_SIMULATED, resolve_root

PEM_MARKER = b"-----BEGIN"
DER_SEQUENCE = 0x30  # a DER certificate starts with a SEQUENCE; a CC log with its pcrIndex (0, 1)
DIGEST_PREVIEW = 16  # hex characters of a digest shown per event in the text listing


class InputError(VerificationError):
    """A file given on the command line cannot be read as what it should be."""


def load_event_log(data: bytes) -> tuple[EventLog, str]:
    """A CC event log from raw log bytes (a CCEL data file) or a PEM/DER CA certificate carrying
    it in its event-log extension; returns the log and where it came from."""
    if data.lstrip().startswith(PEM_MARKER) or data[:1] == bytes([DER_SEQUENCE]):
        try:
            if data.lstrip().startswith(PEM_MARKER):
                cert = x509.load_pem_x509_certificate(data)
            else:
                cert = x509.load_der_x509_certificate(data)
        except ValueError as exc:
            raise InputError(f"not a PEM or DER X.509 certificate: {exc}") from exc
        log = ca_extension(cert, OID_EVENT_LOG, "event log")
        return eventlog.parse(log), f"the event-log extension of '{cert.subject.rfc4514_string()}'"
    return eventlog.parse(data), "a raw CC event log"


def quote_rtmrs(quote: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 of a v4 or v5 TD quote's body; the signature is not checked here (see `quote`)."""
    return parse_quote(quote).body.rtmrs


def _event_dict(event: eventlog.CcEvent) -> dict[str, Any]:
    return {
        "number": event.number,
        "offset": event.offset,
        "mr_index": event.mr_index,
        "rtmr": event.rtmr,
        "type": event.event_type,
        "type_name": eventlog.event_type_name(event.event_type),
        "digests": {f"{alg:#06x}": digest.hex() for alg, digest in event.digests.items()},
        "data": event.data.hex(),
    }


def _cmd_eventlog(args: argparse.Namespace, out: TextIO) -> int:
    data = Path(args.log).read_bytes()
    if args.table:
        table = eventlog.parse_ccel_table(Path(args.table).read_bytes())
        data = eventlog.log_area(data, table)
        out.write(
            f"{args.table}: CCEL table, CC type {table.cc_type}"
            f"{' (TDX)' if table.cc_type == eventlog.CC_TYPE_TDX else ''}, log area "
            f"{table.log_area_minimum_length} bytes at {table.log_area_start_address:#x}\n"
            if not args.json
            else ""
        )
    log, source = load_event_log(data)
    replayed = log.replay()
    expected = quote_rtmrs(Path(args.quote).read_bytes()) if args.quote else None
    bad = eventlog.mismatched_rtmrs(replayed, expected) if expected is not None else []
    if args.json:
        result: dict[str, Any] = {
            "source": source,
            "algorithms": {f"{a:#06x}": size for a, size in log.spec.algorithms.items()},
            "events": [_event_dict(e) for e in log.events],
            "end": log.end,
            "padding": log.padding,
            "rtmrs": [v.hex() for v in replayed],
        }
        if expected is not None:
            result["quote_rtmrs"] = [v.hex() for v in expected]
            result["mismatched_rtmrs"] = bad
            result["ok"] = not bad
        json.dump(result, out, indent=2)
        out.write("\n")
        return 1 if bad else 0
    algorithms = ", ".join(eventlog.algorithm_name(a) for a in log.spec.algorithms)
    out.write(
        f"{args.log}: {source}, {len(log.events)} events in {log.end} bytes "
        f"({log.padding} bytes of fill after them); digests: {algorithms}\n"
    )
    out.write(f"{'#':>4} {'offset':>7} {'MR':>3}  {'type':<34} SHA-384 digest, data bytes\n")
    for e in log.events:
        digest = e.sha384.hex()[:DIGEST_PREVIEW] + "..." if e.sha384 else "-"
        note = "" if e.extends else " (extends nothing)"
        out.write(
            f"{e.number:>4} {e.offset:>7} {e.mr_index:>3}  "
            f"{eventlog.event_type_name(e.event_type):<34} {digest} {len(e.data)}{note}\n"
        )
    for index, value in enumerate(replayed):
        verdict = ""
        if expected is not None:
            verdict = "  matches the quote" if index not in bad else "  DIFFERS from the quote"
        out.write(f"RTMR{index} {value.hex()}{verdict}\n")
    for index in bad:
        assert expected is not None
        out.write(
            f"RTMR{index} mismatch: the log replays to {replayed[index].hex()}, "
            f"the quote has {expected[index].hex()}\n"
        )
    if expected is not None and not bad:
        out.write("the event log replays to the quote's RTMR0..3 (quote signature not checked)\n")
    return 1 if bad else 0


def _ram(text: str) -> tuple[int, int]:
    try:
        gpa, size = text.split(":")
        return int(gpa, 0), int(size, 0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not GPA:SIZE (e.g. 0:0x2000000)") from exc


def _print_reference(values: ReferenceValues, out: TextIO) -> None:
    out.write(f"MRTD              {values.mrtd.hex()}\n")
    if values.launch_event is not None:
        out.write(f"RTMR0 event       {values.launch_event.hex()} (launch parameters)\n")
    for label, rtmrs in (
        ("at quote", values.rtmrs_at_quote),
        ("after boot", values.rtmrs_after_boot),
    ):
        if rtmrs is not None:
            for index, value in enumerate(rtmrs):
                out.write(f"RTMR{index} {label:<11} {value.hex()}\n")
    for bank, value in values.pcr0.items():
        out.write(f"PCR0 {bank:<12} {value.hex()}\n")
    for bank, value in values.pcr4.items():
        out.write(f"PCR4 {bank:<12} {value.hex()}\n")
    for note in values.notes:
        out.write(f"note: {note}\n")


def _cmd_reference(args: argparse.Namespace, out: TextIO) -> int:
    values = reference_values(
        args.image,
        ram=args.ram or LOCAL_BACKEND_RAM,
        vcpus=args.vcpus,
        l1_version=args.l1_version,
        command_line=args.command_line,
    )
    if args.json:
        json.dump(values.as_dict(), out, indent=2)
        out.write("\n")
    else:
        _print_reference(values, out)
    return 0


def _statuses(text: str) -> frozenset[TcbStatus]:
    try:
        return frozenset(TcbStatus(part.strip()) for part in text.split(",") if part.strip())
    except ValueError as exc:
        known = ", ".join(s.value for s in TcbStatus if s is not TcbStatus.REVOKED)
        raise argparse.ArgumentTypeError(f"{exc}; known: {known}") from exc


def _time(text: str) -> Any:
    try:
        return parse_time(text, "--at")
    except VerificationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _measurements(result: Appraisal) -> dict[str, str]:
    if result.quote is None:
        return {}
    body = result.quote.body
    values = {
        "MRTD": body.mrtd.hex(),
        **{f"RTMR{i}": value.hex() for i, value in enumerate(body.rtmrs)},
        "REPORTDATA": body.reportdata.hex(),
        "ATTRIBUTES": f"{body.tdattributes:016x}",
        "XFAM": f"{body.xfam:016x}",
        "TEE_TCB_SVN": body.tee_tcb_svn.hex(),
        "MRSEAM": body.mrseam.hex(),
    }
    if isinstance(body, TdQuoteBody15):
        values["TEE_TCB_SVN2"] = body.tee_tcb_svn2.hex()
        values["MRSERVICETD"] = body.mrservicetd.hex()
    if isinstance(body, TdQuoteBody15Ex):
        values["VM_INDEX"] = str(body.vm_index)
        values["TD_ID"] = body.td_id.hex()
    return values


def _pck_chain_or_none(quote: bytes) -> tuple[x509.Certificate, ...]:
    """The quote's PCK chain for the PCK CRL issuer; a malformed quote fails at 'parse' later."""
    try:
        return parse_quote(quote).pck_chain
    except VerificationError:
        return ()


def _cmd_quote(args: argparse.Namespace, out: TextIO) -> int:
    root, root_label = resolve_root(args.root)
    quote = Path(args.quote).read_bytes()
    collateral = None
    try:
        if args.collateral and Path(args.collateral).is_dir():
            collateral = Collateral.from_pcs_directory(args.collateral, _pck_chain_or_none(quote))
        elif args.collateral:
            collateral = Collateral.load(args.collateral)
    except VerificationError as exc:
        if args.json:
            refusal = {"ok": False, "failed_step": "collateral", "reason": str(exc)}
            out.write(json.dumps(refusal, indent=2) + "\n")
        else:
            out.write(f"FAIL collateral: {exc}\n")
            out.write(f"quote REJECTED at step 'collateral': {exc}\n")
        return 1
    result = appraise(
        quote,
        root,
        collateral=collateral,
        at=args.at,
        accept=args.accept,
        allow_debug=args.allow_debug,
    )
    failure = result.failure
    measurements = _measurements(result)
    if args.json:
        verdict = result.verdict
        document: dict[str, Any] = {
            "ok": result.ok,
            "root": root_label,
            "at": result.at.isoformat(),
            "steps": [
                {"step": s.name, "ok": s.ok, "detail": s.detail, "error": s.error}
                for s in result.steps
            ],
            "measurements": measurements,
            "tcb_status": verdict.status.value if verdict else None,
            "advisory_ids": list(verdict.advisory_ids) if verdict else [],
            "tcb_parts": {part: str(status) for part, status in verdict.parts} if verdict else {},
            "trailing_bytes": len(result.quote.trailing) if result.quote else 0,
        }
        if failure is not None:
            document["failed_step"] = failure.name
            document["reason"] = failure.detail
        json.dump(document, out, indent=2)
        out.write("\n")
        return 0 if result.ok else 1
    out.write(f"root: {root_label}\n")
    for step in result.steps:
        mark = "ok  " if step.ok else "FAIL"
        out.write(f"{mark} {step.name}: {step.detail}\n")
    for name, value in measurements.items():
        out.write(f"{name:<12} {value}\n")
    if collateral is None and failure is None:
        out.write("TCB status: not judged (no --collateral)\n")
    elif result.verdict is not None:
        ids = ", ".join(result.verdict.advisory_ids) or "none"
        out.write(f"TCB status: {result.verdict.status} (advisories: {ids})\n")
    if failure is not None:
        out.write(f"quote REJECTED at step '{failure.name}': {failure.detail}\n")
        return 1
    out.write("quote VERIFIED\n")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verifier",
        description="Check TD evidence offline: TD quotes and their collateral, CC event logs "
        "against quotes, and the reference values of a built image.",
        epilog="Exit status: 0 the check holds; 1 it does not, or an input is malformed (the "
        "message names the RTMR, field or offset); 2 usage error.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    quote = sub.add_parser(
        "quote",
        help="verify a TD quote (v4/v5) to a root, and its TCB status with collateral",
        description="Verify a TD quote: parse (v4 or v5; bytes after the signature data are "
        "reported, not used), PCK chain to the root, QE report signature, QE binding, quote "
        "signature; with --collateral also CRLs, revocation, TCB info, QE identity and the TCB "
        "status. Exit 0 when every step holds and the TCB status is accepted.",
    )
    quote.add_argument("quote", help="the TD quote, binary")
    quote.add_argument(
        "--root",
        default=ROOT_INTEL,
        metavar="FILE|simulated",
        help=f"the trusted root: '{ROOT_INTEL}' (default, Intel's SGX Root CA shipped with the "
        f"verifier), '{ROOT_SIMULATED}' (tdxsim's SIMULATED root), or a PEM/DER file",
    )
    quote.add_argument(
        "--collateral",
        metavar="FILE",
        help="collateral: a JSON file (TCB info, QE identity, signatures, issuer chains, CRLs), "
        "or a folder of PCS responses as served (see docs/quote-verification.md)",
    )
    quote.add_argument(
        "--at",
        type=_time,
        metavar="ISO-TIME",
        help="judge certificates and collateral at this time (default: now)",
    )
    quote.add_argument(
        "--accept",
        type=_statuses,
        default=DEFAULT_ACCEPTED,
        metavar="STATUS,...",
        help="TCB statuses to accept (default UpToDate; Revoked is never accepted)",
    )
    quote.add_argument(
        "--allow-debug",
        action="store_true",
        help="accept a debug TD (ATTRIBUTES.DEBUG; refused by default: the host can read it)",
    )
    quote.add_argument("--json", action="store_true", help="print JSON instead of text")
    quote.set_defaults(run=_cmd_quote)
    log = sub.add_parser(
        "eventlog",
        help="list a CC event log, replay RTMR0..3, compare with a quote",
        description="Parse a TCG crypto-agile CC event log (the CCEL data Linux exposes in "
        "/sys/firmware/acpi/tables/data/CCEL, or the vTPM CA certificate carrying it, PEM or "
        "DER), list its records, replay RTMR0..3 with SHA-384 (MR index = RTMR + 1) and, with "
        "--quote, compare them with a TD quote's RTMRs: exit 1 naming each RTMR that differs.",
    )
    log.add_argument("log", help="CCEL data file, or a PEM/DER vTPM CA certificate")
    log.add_argument(
        "--table",
        metavar="ACPI-TABLE",
        help="the ACPI CCEL table (/sys/firmware/acpi/tables/CCEL): parse only its log area",
    )
    log.add_argument("--quote", help="a TD quote (v4) whose RTMR0..3 the log must replay to")
    log.add_argument("--json", action="store_true", help="print JSON instead of text")
    log.set_defaults(run=_cmd_eventlog)
    ref = sub.add_parser(
        "reference",
        help="MRTD, expected RTMRs and PCR0 of a built IGVM image",
        description="Print what a relying party pins for an image: MRTD, RTMR0..3 at the vTPM "
        "CA's quote and after boot (they depend on the launch parameters the host gives: "
        "--ram, --vcpus), and PCR0 for an L1 version string.",
    )
    ref.add_argument("image", help="the IGVM image (e.g. out/tdp.igvm)")
    ref.add_argument(
        "--ram",
        type=_ram,
        action="append",
        metavar="GPA:SIZE",
        help="a RAM region of the memory map the host gives (repeatable; default 0:32MiB)",
    )
    ref.add_argument(
        "--vcpus", type=int, default=LOCAL_BACKEND_VCPUS, help="VP count the host gives"
    )
    ref.add_argument(
        "--l1-version",
        metavar="TEXT",
        help="L1's version string (e.g. 'tdp-svsm 0.1.0') for PCR0; the image carries none",
    )
    ref.add_argument(
        "--command-line",
        default="",
        metavar="TEXT",
        help="the launch options the host gives (`invoke run --serve`: 'tdp.relay=serve', "
        "plus ' tdp.dev-platform-port=1' with --dev-platform-port); default none",
    )
    ref.add_argument("--json", action="store_true", help="print JSON instead of text")
    ref.set_defaults(run=_cmd_reference)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; returns the exit status."""
    args = make_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        status: int = args.run(args, stream)
    except (VerificationError, IgvmError, OSError) as exc:
        print(f"verifier {args.command}: {exc}", file=sys.stderr)
        return 1
    return status
