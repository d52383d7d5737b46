"""`vtpm` command line: `serve` runs the socket server, `info` describes a running TPM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from vtpm import attest, manufacture
from vtpm.engine import TpmEngine
from vtpm.fastpath import FastPath
from vtpm.server import (
    DEFAULT_BUSY_POLL_US,
    DEFAULT_IDLE_TIMEOUT_S,
    MAX_PORT,
    Provisioner,
    ServerConfigError,
    VtpmServer,
    check_port,
    default_busy_poll_us,
)

DEFAULT_PORT = 2321
DEFAULT_HOST = "127.0.0.1"
DEFAULT_EKS = "rsa,ecc"
# The standalone server has no TD to quote, so its default attester is the clearly fake one.
DEFAULT_ATTESTER = "fake"
READY_PREFIX = "vtpm: ready"


def _port(text: str) -> int:
    """--port: a number 0..65534 (the platform port is one above it)."""
    try:
        port = int(text, 0)
        check_port(port)
    except ValueError as exc:  # ServerConfigError is a ValueError
        detail = str(exc) if isinstance(exc, ServerConfigError) else f"port {text}: not a number"
        raise argparse.ArgumentTypeError(detail) from exc
    return port


def _idle_timeout(text: str) -> float | None:
    """--idle-timeout: seconds (> 0), or 0 for none."""
    try:
        seconds = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"idle timeout {text!r}: not a number") from exc
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"idle timeout {text}: must be 0 (none) or seconds > 0")
    return seconds or None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtpm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a fresh in-memory vTPM (swtpm and mssim sockets)")
    serve.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"command port 0..{MAX_PORT}; the platform port is port+1 (default {DEFAULT_PORT}; "
        "0 picks a free pair)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=_idle_timeout,
        default=DEFAULT_IDLE_TIMEOUT_S,
        metavar="S",
        help="close a connection silent for S seconds, so idle clients cannot hold every "
        f"connection slot (default {DEFAULT_IDLE_TIMEOUT_S:g}; 0: never)",
    )
    serve.add_argument(
        "--allow-stop",
        action="store_true",
        help="let a client end the server with the mssim TPM_STOP command (refused otherwise: "
        "any local client could stop it)",
    )
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"address (default {DEFAULT_HOST})")
    serve.add_argument(
        "--wipe-on-power-cycle",
        action="store_true",
        help="forget all NV and re-manufacture on every platform power cycle",
    )
    serve.add_argument(
        "--ek",
        default=DEFAULT_EKS,
        help=f"EK kinds to manufacture, comma-separated (default {DEFAULT_EKS})",
    )
    serve.add_argument(
        "--attester",
        default=DEFAULT_ATTESTER,
        help=f"attester that quotes the CA key (default {DEFAULT_ATTESTER!r})",
    )
    serve.add_argument(
        "--no-provision",
        action="store_true",
        help="skip manufacture: serve a started TPM without EKs or certificates",
    )
    serve.add_argument(
        "--busy-poll-us",
        type=int,
        default=None,
        metavar="US",
        help="after each command, poll this long for the next one before sleeping "
        f"(default {DEFAULT_BUSY_POLL_US} with two or more CPUs, else 0; "
        "0 disables; costs CPU, saves a process wake-up per command)",
    )
    serve.add_argument(
        "--no-fastpath",
        action="store_true",
        help="answer swtpm-framed commands in Python, not through the native "
        "fast path (build/native/libvtpm_fastpath.so, built by ./tdp setup)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every connection error")
    info = sub.add_parser("info", help="print EK names, certificate subjects and PCR banks")
    info.add_argument("--tcti", required=True, help="TCTI string, e.g. mssim:host=...,port=...")
    return parser


def _provisioner(eks: list[str], attester_name: str) -> tuple[Provisioner, str]:
    """The manufacture step for the server, and a line saying what it provisions."""
    attester = attest.attester_from_name(attester_name)

    def provision(engine: TpmEngine) -> object:
        return manufacture.manufacture(engine, ek=eks, attester=attester)

    note = f"provisioning: EKs {','.join(eks)}, attester {attester_name!r}"
    if attester_name == "fake":
        note += " (FAKE quote: the CA is not bound to any TD)"
    return provision, note


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM/SIGINT (or, with --allow-stop, a TPM_STOP signal)."""
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="vtpm: %(message)s",
        stream=sys.stderr,
    )
    eks = [k.strip() for k in args.ek.split(",") if k.strip()]
    if args.no_provision:
        provision, note = None, "provisioning: skipped (--no-provision): UNPROVISIONED TPM"
    else:
        try:
            provision, note = _provisioner(eks, args.attester)
        except (KeyError, ValueError, LookupError) as exc:
            print(f"vtpm serve: {exc}", file=sys.stderr)
            return 2
    busy_poll_us = default_busy_poll_us() if args.busy_poll_us is None else args.busy_poll_us
    if args.no_fastpath:
        fastpath, why_not = None, "--no-fastpath"
    else:
        fastpath, why_not = FastPath.load()
    engine = TpmEngine()
    try:
        try:
            server = VtpmServer(
                engine,
                args.host,
                args.port,
                wipe_on_power_cycle=args.wipe_on_power_cycle,
                provision=provision,
                busy_poll_us=busy_poll_us,
                fastpath=fastpath,
                idle_timeout_s=args.idle_timeout,
                allow_stop=args.allow_stop,
            )
        except ValueError as exc:  # an option out of range
            print(f"vtpm serve: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"vtpm serve: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        print(f"vtpm: libtpms TPM 2.0, NV in memory only; {note}", flush=True)
        try:
            server.start_tpm()
        except Exception as exc:
            print(f"vtpm serve: bringing up the TPM failed: {exc}", file=sys.stderr)
            return 1

        def stop(signum: int, _frame: FrameType | None) -> None:
            server.request_stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        mode = "wipe on power cycle" if args.wipe_on_power_cycle else "state kept until exit"
        idle = (
            f"idle connections closed after {args.idle_timeout:g} s"
            if args.idle_timeout
            else "idle connections kept (--idle-timeout 0)"
        )
        stop_note = "TPM_STOP ends the server" if args.allow_stop else "TPM_STOP refused"
        print(f"vtpm: {idle}; {stop_note}", flush=True)
        polling = (
            f"busy-polls {busy_poll_us} us after each command"
            if busy_poll_us
            else "sleeps between commands (no busy polling)"
        )
        print(f"vtpm: {polling}", flush=True)
        if fastpath is not None:
            print(f"vtpm: swtpm data channel: native fast path {fastpath.library}", flush=True)
        else:
            print(f"vtpm: swtpm data channel: Python path ({why_not})", flush=True)
        for name, tcti in server.tcti_strings().items():
            print(f"vtpm: TCTI {name}: {tcti}", flush=True)
        print(
            f"{READY_PREFIX} on {args.host} command port {server.port} platform port "
            f"{server.platform_port} ({mode})",
            flush=True,
        )
        server.serve_forever()
        print("vtpm: stopped", flush=True)
        return 0
    finally:
        engine.close()


def info(args: argparse.Namespace) -> int:
    """Print what `vtpm.info.describe` finds on the TPM behind a TCTI."""
    from vtpm.info import describe  # tpm2-pytss: a host-side client, not needed to serve

    try:
        print(describe(args.tcti))
    except Exception as exc:
        print(f"vtpm info: {args.tcti}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m vtpm` and the `vtpm` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return info(args)
