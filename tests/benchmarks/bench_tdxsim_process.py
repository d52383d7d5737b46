"""Benchmark of the TD process: TD exit round trip to the host process, L2 exit round trip in L1.

Run: python tests/benchmarks/bench_tdxsim_process.py [--quick]. The minimal L1 image
(tests/integration/tdxsim/l1_min) boots in a TD process and times, from inside L1, (a) a TDVMCALL
(HLT) answered by the host process over the channel and (b) VP.ENTER -> CPUID exit -> back in L1.
The same operations in one process (module, host VMM and test-as-L1 together) are measured in the
same run for the ratios. Prints medians, targets and whether they were met; never fails on a miss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tdxdefs.tdcall import Leaf
from tdxdefs.tdvmcall import Tdvmcall
from tdxsim.host.channel import Channel, ChannelClosed
from tdxsim.host.l1_image import build_l1_image
from tdxsim.host.services import HostVmm, ModuleControl
from tdxsim.host.shared_memory import SharedMemory
from tdxsim.host.vmm import RunStatus, Vmm, simulated_platform
from tdxsim.module.registers import Regs
from tdxsim.testing import TdHarness, assemble

TD_EXIT_TARGET_US = 40.0
L2_EXIT_TARGET_US = 30.0
L1_MIN = Path(__file__).resolve().parents[1] / "integration" / "tdxsim" / "l1_min"
IMAGE_GPA = 0x100000
RAM = [(0, 8 << 20)]
EXPOSE_R10_R15 = 0xFC00


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def median_us(samples_ns: list[int]) -> float:
    return statistics.median(samples_ns) / 1000


def in_process(iterations: int) -> tuple[float, float]:
    """(TDVMCALL, L2 exit) medians in us with module, host and L1 in one process."""
    h = TdHarness.default(ram_mib=8)
    h.accept(0, 0x200000)
    h.module.host = HostVmm(SharedMemory.of_memory(h.memory), ModuleControl(h.module))
    l2 = h.l2(1)
    code = 0x10000
    l2.load(code, assemble("cpuid", code))
    assert l2.enter(rip=code).reason == 10
    vmcall = Regs(rax=Leaf.VP_VMCALL, rcx=EXPOSE_R10_R15, r11=Tdvmcall.HLT)
    enter = Regs(rax=Leaf.VP_ENTER, rcx=1 << 52, rdx=l2.state_gpa)
    out = []
    for regs in (vmcall, enter):
        samples = []
        for _ in range(iterations):
            t0 = time.perf_counter_ns()
            h.module.tdcall(regs)
            samples.append(time.perf_counter_ns() - t0)
        out.append(median_us(samples))
    return out[0], out[1]


def bare_channel(iterations: int) -> float:
    """Median us of an ENTER/EXIT-sized message ping-pong between two processes, no TD at all:
    the floor the channel itself sets on a TD exit round trip on this machine, right now."""
    host_end, td_end = Channel.pair()
    pid = os.fork()
    if pid == 0:  # the echoing peer
        host_end.close()
        peer = Channel(td_end)
        with contextlib.suppress(ChannelClosed):
            while True:
                peer.sock.send(peer.recv_raw())
        os._exit(0)
    td_end.close()
    channel = Channel(host_end)
    regs = Regs()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        channel.send_enter(regs)
        channel.recv_raw()
        samples.append(time.perf_counter_ns() - t0)
    channel.close()
    os.waitpid(pid, 0)
    return median_us(samples)


def td_process(entry: str) -> tuple[dict[str, list[int]], float, int]:
    """Boot the L1 bench entry in a TD process; (samples, boot-to-done seconds, TD exits)."""
    mac_key, quoting = simulated_platform(b"bench")
    image = build_l1_image([L1_MIN], entry)
    t0 = time.perf_counter()
    with Vmm(quoting) as vmm:
        vmm.create(RAM, mac_key=mac_key)
        vmm.load_l1_image(image, IMAGE_GPA)
        vmm.aug_rest()
        vmm.finalize()
        result = vmm.run(120)
    if result.status != RunStatus.DONE:
        raise SystemExit(f"TD process run {result.status}: {result.detail}")
    return json.loads(result.output), time.perf_counter() - t0, result.exits


def boot_seconds() -> float:
    """Spawn, build, finalize and run the minimal L1 to its end (quote included)."""
    mac_key, quoting = simulated_platform(b"bench boot")
    image = build_l1_image([L1_MIN], "l1_min.main:entry")
    t0 = time.perf_counter()
    with Vmm(quoting) as vmm:
        vmm.create(RAM, mac_key=mac_key)
        vmm.load_l1_image(image, IMAGE_GPA)
        vmm.aug_rest()
        vmm.finalize()
        result = vmm.run(60)
    assert result.status == RunStatus.DONE, result.detail
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (under 30 s)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    entry = "l1_min.l2loop:bench_quick" if args.quick else "l1_min.l2loop:bench"
    samples, run_s, exits = td_process(entry)
    iterations = len(samples["tdvmcall_ns"])
    local_vmcall, local_l2 = in_process(iterations)
    td_exit = median_us(samples["tdvmcall_ns"])
    l2_exit = median_us(samples["l2_exit_ns"])
    print(
        f"TD process, minimal L1 image, {iterations} iterations each ({exits} TD exits, "
        f"{run_s:.2f} s from spawn to end)"
    )
    print("TD exit round trip: TDVMCALL(HLT) from L1 answered by the host process")
    print(
        f"  median {td_exit:8.1f} us   target < {TD_EXIT_TARGET_US:.0f} us: "
        f"{verdict(td_exit < TD_EXIT_TARGET_US)}"
    )
    print(
        f"  same call in one process  {local_vmcall:8.1f} us   ratio "
        f"{td_exit / local_vmcall:5.1f}x (the channel's cost)"
    )
    floor = bare_channel(iterations)
    print(f"  bare channel ping-pong    {floor:8.1f} us   (floor: two processes, no TD)")
    print("L2 exit round trip seen from L1 in the TD process: VP.ENTER -> CPUID exit -> L1")
    print(
        f"  median {l2_exit:8.1f} us   target < {L2_EXIT_TARGET_US:.0f} us: "
        f"{verdict(l2_exit < L2_EXIT_TARGET_US)}"
    )
    print(
        f"  raw module.tdcall in one process {local_l2:8.1f} us   ratio {l2_exit / local_l2:5.2f}x"
    )
    print(
        f"Boot of the minimal L1 (spawn, build, finalize, GetQuote, exit): "
        f"{boot_seconds():.2f} s   (no target; reported)"
    )
    print(f"(total {time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
