"""`invoke run --serve`: boot the TD, then serve one L2's vTPM to TPM clients until interrupted.

The host passes its launch options to L1 in the IGVM command-line parameter (IGVM_VHT_COMMAND_LINE,
at LAUNCH_COMMAND_LINE_OFFSET of the parameter area the recipe declares): LAUNCH_OPTION_SERVE asks
L1 to share the relay ring page and serve, LAUNCH_OPTION_DEV_PLATFORM_PORT says power cycles come
from the platform port. The parameter area is host-filled and unmeasured in MRTD, and L1 extends
all of it into RTMR0, so a verifier sees the options; L1 also records the platform-port mode in
RTMR3. A dedicated byte in a measured page could not carry them: it would change MRTD.

The TCTI strings are printed once L1 has shared the ring page (its MapGPA); commands that come
earlier wait. SIGINT or SIGTERM stop the host loop at the next TD exit (a HLT waits at most
tdxsim.host.relay.HALT_WAIT_S), then the TD process is shut down and the sockets closed.

With a timeline directory, every process of the path records when each command passes it
(tdxdefs.timeline) and the per-step medians are printed at the end (orchestrator.timeline).
"""

from __future__ import annotations

import signal
import statistics
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from orchestrator.errors import LocalBootError, reason
from orchestrator.l2image import write_l2_image
from orchestrator.product import (
    DEFAULT_RECIPE,
    MAX_L2_VMS,
    NUM_L2_VMS,
    ROOT,
    TD_RAM,
    launch_options,
    write_l1_image,
)
from orchestrator.relay import RelayServer
from orchestrator.timeline import read_marks, report, summarize
from tdxdefs import timeline as recording
from tdxdefs.relay import RELAY_RING_GPA
from tdxsim.attestation.pck import WELL_KNOWN_SEED
from tdxsim.host.relay import RelayStats
from tdxsim.host.vmm import RunStatus, Vmm, simulated_platform

RING_WAIT_S = 120.0  # L1 boots (manufacture included) and shares the ring within this


@dataclass
class ServeResult:
    """How a serve ended: the host loop's status, what it said, and the relay's figures."""

    status: RunStatus
    detail: str
    stats: RelayStats
    tcti: dict[str, str]


def serve_image(
    image: Path,
    *,
    port: int = 0,
    dev_platform_port: bool = False,
    l2: int = 1,
    l2_count: int = NUM_L2_VMS,
    stop: threading.Event | None = None,
    out: Callable[[str], None] = print,
) -> ServeResult:
    """Boot `image` with the serve options and relay TPM commands to L2 `l2` until `stop`."""
    if not 1 <= l2 <= l2_count:
        raise LocalBootError(f"--l2 {l2}: the TD has L2 VMs 1..{l2_count}")
    stop = stop if stop is not None else threading.Event()
    # the well-known SIMULATED platform: its root ships with the verifier, so `invoke attest` in
    # another process can check the quote (and knows it proves nothing about hardware)
    mac_key, quoting = simulated_platform(WELL_KNOWN_SEED)
    server = RelayServer(port=port, vm=l2, dev_platform_port=dev_platform_port)
    tcti = server.tcti_strings()
    try:
        with Vmm(quoting) as vmm:
            vmm.create(TD_RAM, mac_key=mac_key, num_l2_vms=l2_count)
            vmm.load_igvm(image, TD_RAM, command_line=launch_options(dev_platform_port))
            vmm.aug_rest()
            mrtd = vmm.finalize()
            out(f"TD built from {image} (MRTD {mrtd.hex()}); launch options: "
                f"{launch_options(dev_platform_port).decode()}")  # fmt: skip
            assert vmm.host is not None
            relay = vmm.host.attach_relay(server, stop)

            def announce() -> None:
                while not stop.is_set():
                    if relay.ready.wait(0.2):
                        mode = "on" if dev_platform_port else "off"
                        out(f"serving the vTPM of L2 {l2} (dev platform port {mode}):")
                        out(f"    {tcti['mssim']}")
                        out(f"    {tcti['swtpm']}")
                        return

            threading.Thread(target=announce, name="relay-announce", daemon=True).start()
            run = vmm.run(float("inf"))
            uart = bytes(vmm.host.uart.output).decode(errors="replace")
            for line in uart.splitlines()[-20:]:
                out(f"    L1| {line}")
    finally:
        server.close()
    stats = relay.stats
    if run.status == RunStatus.STOPPED:
        return ServeResult(run.status, "stopped on request", stats, tcti)
    detail = run.detail
    if not relay.ready.is_set():
        detail = (
            f"L1 never shared the relay ring page at GPA {RELAY_RING_GPA:#x}: this L1 does not "
            f"serve the relay{f' ({detail})' if detail else ''}"
        )
    return ServeResult(run.status, detail, stats, tcti)


def summary(stats: RelayStats) -> str:
    """One line of figures for the end of a serve."""
    exits = list(stats.exits_per_command)
    median = f"{statistics.median(exits):.0f}" if exits else "-"
    return (
        f"relayed {stats.answered} commands ({stats.failed} failed, {len(stats.refused)} "
        f"refused rings); TD exits per TPM command: median {median}; answers taken at L1's "
        f"HLT {stats.at_halt}, at its notify {stats.at_notify}"
    )


def main(
    port: int = 0,
    dev_platform_port: bool = False,
    l2: int = 1,
    l2_count: int = NUM_L2_VMS,
    image: str = "",
    recipe: str = "",
    timeline: str = "",
) -> int:
    """Entry point of `invoke run --serve`; builds the product unless `image` is given, and
    records a timeline in the directory `timeline` when it is given."""
    from igvm.build import build as build_igvm

    if not 1 <= l2_count <= MAX_L2_VMS:
        print(f"run: --l2-count {l2_count}: a TD has 1 to {MAX_L2_VMS} L2 VMs", file=sys.stderr)
        return 2
    if not 1 <= l2 <= l2_count:
        print(f"run --serve: --l2 {l2}: the TD has L2 VMs 1..{l2_count} (--l2-count)",
              file=sys.stderr)  # fmt: skip
        return 2
    timeline_dir = Path(timeline) if timeline else None
    if timeline_dir is not None:
        try:
            timeline_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"run --serve: --timeline {timeline}: {reason(exc)}", file=sys.stderr)
            return 2
        if any(timeline_dir.glob(recording.FILE_GLOB)):
            held = f"already holds a timeline ({recording.FILE_GLOB})"
            print(f"run --serve: --timeline {timeline}: {held}; give an empty or new directory",
                  file=sys.stderr)  # fmt: skip
            return 2
        recording.enable(timeline_dir.resolve())
    stop = threading.Event()
    signals = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:
            raise KeyboardInterrupt  # a second signal: do not wait for the TD

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        path = Path(image) if image else ROOT / "out" / "tdp.igvm"
        if not image:
            print("building the L1 image, the L2 image and the IGVM image", flush=True)
            write_l1_image()
            write_l2_image()
            build_igvm(Path(recipe) if recipe else DEFAULT_RECIPE, path)
        result = serve_image(
            path,
            port=port,
            dev_platform_port=dev_platform_port,
            l2=l2,
            l2_count=l2_count,
            stop=stop,
            out=lambda line: print(line, flush=True),
        )
    except (LocalBootError, OSError, ValueError) as exc:
        print(f"run --serve: {reason(exc)}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(summary(result.stats))
    if timeline_dir is not None:
        recording.flush()
        print(report(summarize(read_marks(timeline_dir))))
    if result.status != RunStatus.STOPPED:
        print(f"run --serve: the TD ended: {result.status}: {result.detail}", file=sys.stderr)
        return 1
    print("run --serve: stopped; the TD is shut down")
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dev-platform-port", action="store_true")
    parser.add_argument("--l2", type=int, default=1)
    parser.add_argument("--l2-count", type=int, default=NUM_L2_VMS)
    parser.add_argument("--image", default="")
    parser.add_argument("--timeline", default="", help="record per-step times in this directory")
    args = parser.parse_args()
    sys.exit(
        main(
            args.port,
            args.dev_platform_port,
            args.l2,
            args.l2_count,
            args.image,
            timeline=args.timeline,
        )
    )
