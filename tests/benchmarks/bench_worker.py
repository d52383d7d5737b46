"""Benchmark of L1's round trip to a vTPM worker process: one TPM2_GetRandom, as L1's CRB runs it.

A real worker started from an image zip of this checkout (as L1 starts it from its measured
image), driven through `svsm.vtpm_workers`. Between commands the caller stays busy for a while,
as L1 is while the L2 runs up to its CRB START. Three ways, batches alternated:
  sleeping:  neither side spins (L1 sleeps in poll, the worker in its receive): two wake-ups;
  L1 spins:  L1 polls for the answer (ANSWER_SPIN_NS), the worker still wakes up for the command;
  EXPECT:    as L1 serves a relayed command: EXPECT when the L2 is handed the command, so the
             worker polls for it, and L1 polls for the answer.
Prints the median round trip of each and its ratio to the sleeping one (no target of its own: the
whole path's target is bench_relay's).

Run: python tests/benchmarks/bench_worker.py [--quick].
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from svsm import vtpm_workers  # noqa: E402
from svsm.vtpm_workers import VtpmWorker, VtpmWorkers  # noqa: E402
from tdxsim.host.l1_image import zip_packages  # noqa: E402
from vtpm import wire  # noqa: E402
from vtpm.attest import FakeAttester  # noqa: E402

GET_RANDOM_16 = bytes.fromhex("80010000000c0000017b0010")
BUSY_BEFORE_NS = 500_000  # L1 and the L2 at work between two commands
EXPECT_AHEAD_NS = 300_000  # from handing the L2 its command to the CRB START


def busy(ns: int) -> None:
    end = time.perf_counter_ns() + ns
    while time.perf_counter_ns() < end:
        pass


def sleeping(worker: VtpmWorker) -> int:
    busy(BUSY_BEFORE_NS + EXPECT_AHEAD_NS)
    saved, vtpm_workers.ANSWER_SPIN_NS = vtpm_workers.ANSWER_SPIN_NS, 0
    try:
        start = time.perf_counter_ns()
        worker.process(GET_RANDOM_16)
        return time.perf_counter_ns() - start
    finally:
        vtpm_workers.ANSWER_SPIN_NS = saved


def l1_spins(worker: VtpmWorker) -> int:
    busy(BUSY_BEFORE_NS + EXPECT_AHEAD_NS)
    start = time.perf_counter_ns()
    worker.process(GET_RANDOM_16)
    return time.perf_counter_ns() - start


def expect(worker: VtpmWorker) -> int:
    busy(BUSY_BEFORE_NS)
    worker.expect()
    busy(EXPECT_AHEAD_NS)
    start = time.perf_counter_ns()
    worker.process(GET_RANDOM_16)
    return time.perf_counter_ns() - start


WAYS: dict[str, Callable[[VtpmWorker], int]] = {
    "sleeping": sleeping,
    "L1 spins": l1_spins,
    "EXPECT": expect,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    batches, iterations = (3, 50) if args.quick else (7, 200)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "l1image.zip"
        image.write_bytes(zip_packages([ROOT / "svsm", ROOT / "vtpm", ROOT / "tdxdefs"]))
        pool = VtpmWorkers(1, str(image))
        try:
            pool.manufacture(FakeAttester())
            worker = pool[1]
            wire.TpmClient(worker).startup_clear()
            samples: dict[str, list[int]] = {name: [] for name in WAYS}
            for _ in range(batches):
                for name, way in WAYS.items():
                    samples[name] += [way(worker) for _ in range(iterations)]
        finally:
            pool.close()
    print(f"L1 -> vTPM worker round trip of TPM2_GetRandom, {batches} x {iterations}")
    slept = statistics.median(samples["sleeping"])
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"{name:10} median {median / 1000:7.1f} us  ({median / slept:.2f} of sleeping)")


if __name__ == "__main__":
    main()
