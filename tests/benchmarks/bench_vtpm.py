"""Benchmark: `vtpm serve` against swtpm through the same tpm2-pytss workload and the `swtpm:` TCTI.

Both servers run in this process tree and one client process talks to both; batches alternate
between them (ABAB..., order flipped each batch) so machine load hits both alike. Prints the
median per command, the ratio of medians and the median of per-batch ratios ours/swtpm (the
figure checked against the target <= 1.0), then the time
from process start to a provisioned, serving vTPM with both EK certificates next to swtpm_setup
--create-ek-cert plus swtpm start on the same machine. Targets are reported, never enforced.

Usage: python tests/benchmarks/bench_vtpm.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMT_HA,
    TPMT_SIG_SCHEME,
    TPMU_HA,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `vtpm` comes from the checkout
from vtpm.server import below_ephemeral_ports  # noqa: E402

READY = re.compile(r"vtpm: ready on \S+ command port (\d+)")
TARGET_RATIO = 1.0
START_TIMEOUT = 60.0
WARMUP_ITERATIONS = 20
PORT_SEARCH_TRIES = 200
RSA_EK_CERT_INDEX = 0x01C00002
ECC_EK_CERT_INDEX = 0x01C0000A
SWTPM_ECC_EK_CERT_INDEX = 0x01C00016
AK_ATTRIBUTES = (
    TPMA_OBJECT.SIGN_ENCRYPT
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
)


def free_port_pair() -> int:
    """A port P with P and P+1 free on loopback (checked, then released), below the ephemeral
    range: the TIME_WAIT sockets this benchmark leaves behind can make bind(port 0) fail."""
    candidates = list(below_ephemeral_ports())
    for _ in range(PORT_SEARCH_TRIES):
        port = random.choice(candidates)
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise OSError("no free pair of adjacent ports below the ephemeral range")


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.005)
    raise TimeoutError(f"nothing listening on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def swtpm_server(state: Path) -> Iterator[tuple[int, int]]:
    """swtpm on a free port pair; yields (port, pid)."""
    port = free_port_pair()
    proc = subprocess.Popen(
        [
            "swtpm",
            "socket",
            "--tpm2",
            "--server",
            f"type=tcp,port={port}",
            "--ctrl",
            f"type=tcp,port={port + 1}",
            "--tpmstate",
            f"dir={state}",
            "--flags",
            "not-need-init,startup-clear",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, proc)
        wait_port(port + 1, proc)
        yield port, proc.pid
    finally:
        stop(proc)


def start_vtpm(*args: str) -> tuple[subprocess.Popen[bytes], int, float]:
    """Start `python -m vtpm serve`; return the process, its port and seconds to the ready line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "vtpm", "serve", "--port", str(free_port_pair()), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    for raw in proc.stdout:
        match = READY.search(raw.decode())
        if match:
            return proc, int(match[1]), time.perf_counter() - t0
    stop(proc)
    err = proc.stderr.read().decode() if proc.stderr else ""
    raise RuntimeError(f"vtpm serve did not become ready: {err}")


@contextmanager
def vtpm_server(*args: str) -> Iterator[tuple[int, int]]:
    """`vtpm serve` with `args`; yields (port, pid)."""
    proc, port, _ = start_vtpm(*args)
    try:
        yield port, proc.pid
    finally:
        stop(proc)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Workload:
    """The benchmarked commands on one ESAPI context; each call is one timed operation."""

    def __init__(self, port: int) -> None:
        self.esapi = ESAPI(TCTILdr("swtpm", f"host=127.0.0.1,port={port}"))
        template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256:null", objectAttributes=AK_ATTRIBUTES)
        self.ak, *_ = self.esapi.create_primary(TPM2B_SENSITIVE_CREATE(), template)
        self.ecc_template = TPM2B_PUBLIC.parse("ecc256")
        self.extend_values = TPML_DIGEST_VALUES(
            [TPMT_HA(hashAlg=TPM2_ALG.SHA256, digest=TPMU_HA(sha256=bytes(range(32))))]
        )
        self.selection = TPML_PCR_SELECTION.parse("sha256:0,1,2,3,16")
        self.scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
        self.nonce = TPM2B_DATA(b"bench-nonce")

    def get_random(self) -> None:
        self.esapi.get_random(32)

    def pcr_extend(self) -> None:
        self.esapi.pcr_extend(ESYS_TR.PCR16, self.extend_values)

    def quote(self) -> None:
        self.esapi.quote(self.ak, self.selection, self.nonce, self.scheme)

    def create_primary_ecc(self) -> None:
        handle, *_ = self.esapi.create_primary(TPM2B_SENSITIVE_CREATE(), self.ecc_template)
        self.esapi.flush_context(handle)

    def close(self) -> None:
        self.esapi.flush_context(self.ak)
        self.esapi.close()


COMMANDS: dict[str, Callable[[Workload], None]] = {
    "GetRandom(32)": Workload.get_random,
    "PCR_Extend": Workload.pcr_extend,
    "Quote (ECDSA P-256)": Workload.quote,
    "CreatePrimary ECC (+flush)": Workload.create_primary_ecc,
}


def run_batch(work: Workload, op: Callable[[Workload], None], iterations: int) -> list[float]:
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        op(work)
        times.append(time.perf_counter() - t0)
    return times


# Each side is a server process: swtpm, then `vtpm serve` with the arguments given.
SIDE_ARGS: dict[str, tuple[str, ...]] = {
    "vtpm": (),
    "vtpm-python": ("--no-fastpath",),
    "vtpm-sleeping": ("--busy-poll-us", "0"),
}
SIDES = ("swtpm", *SIDE_ARGS)
SIDE_LABELS = {
    "swtpm": "swtpm socket (C)",
    "vtpm": "vtpm serve, defaults: native fast path, adaptive busy polling",
    "vtpm-python": "vtpm serve --no-fastpath: every step in Python",
    "vtpm-sleeping": "vtpm serve --busy-poll-us 0: sleeps between commands",
}


def command_latency(batches: int, iterations: int) -> None:
    """Interleave the servers batch by batch (the order rotating every batch) so that load
    changes on the shared machine hit all alike; one client process, one TCTI for all."""
    samples: dict[str, dict[str, list[float]]] = {
        side: {name: [] for name in COMMANDS} for side in SIDES
    }
    batch_ratios: dict[str, dict[str, list[float]]] = {
        side: {name: [] for name in COMMANDS} for side in SIDES[1:]
    }
    cpu: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as state, contextlib.ExitStack() as stack:
        servers = {"swtpm": stack.enter_context(swtpm_server(Path(state)))}
        for side, args in SIDE_ARGS.items():
            servers[side] = stack.enter_context(vtpm_server(*args))
        works = {side: Workload(port) for side, (port, _pid) in servers.items()}
        try:
            for work in works.values():  # warm all: code paths, caches, allocator
                for op in COMMANDS.values():
                    run_batch(work, op, WARMUP_ITERATIONS)
            cpu_before = {side: cpu_seconds(pid) for side, (_port, pid) in servers.items()}
            for batch in range(batches):
                order = SIDES[batch % len(SIDES) :] + SIDES[: batch % len(SIDES)]
                for name, op in COMMANDS.items():
                    medians: dict[str, float] = {}
                    for side in order:
                        times = run_batch(works[side], op, iterations)
                        samples[side][name] += times
                        medians[side] = statistics.median(times)
                    for side in SIDES[1:]:
                        batch_ratios[side][name].append(medians[side] / medians["swtpm"])
            cpu = {
                side: cpu_seconds(pid) - cpu_before[side] for side, (_port, pid) in servers.items()
            }
        finally:
            for work in works.values():
                work.close()
    commands_per_side = batches * iterations * len(COMMANDS)
    print(
        f"per-command latency, tpm2-pytss ESAPI over the swtpm: TCTI, one client process, "
        f"{batches} interleaved batches x {iterations} per server and command; median, and "
        f"the median of per-batch ratios to swtpm:"
    )
    others = SIDES[2:]
    print(
        f"  {'command':28} {'swtpm':>8} {'vtpm':>8} {'ratio':>6}  target      "
        + " ".join(f"{side:>13} {'ratio':>5}" for side in others)
    )
    for name in COMMANDS:
        s = statistics.median(samples["swtpm"][name]) * 1e6
        o = statistics.median(samples["vtpm"][name]) * 1e6
        ratio = statistics.median(batch_ratios["vtpm"][name])
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        extra = " ".join(
            f"{statistics.median(samples[side][name]) * 1e6:11.0f}us "
            f"{statistics.median(batch_ratios[side][name]):5.2f}"
            for side in others
        )
        print(
            f"  {name:28} {s:6.0f}us {o:6.0f}us {ratio:6.2f}  <= {TARGET_RATIO:.1f} "
            f"{verdict:6} {extra}"
        )
    print(
        "  server CPU per command over the timed batches (the price of busy polling): "
        + ", ".join(f"{side} {cpu[side] / commands_per_side * 1e6:.0f}us" for side in SIDES)
    )
    for side in SIDES:
        print(f"    {side}: {SIDE_LABELS[side]}")
    in_process_figures(batches * iterations)


def in_process_figures(iterations: int) -> None:
    """The same GetRandom straight into the engine: what libtpms itself costs, without sockets."""
    from vtpm.engine import TpmEngine

    command = struct.pack(">HIIH", 0x8001, 12, 0x17B, 32)
    with TpmEngine() as engine:
        engine.power_on()
        engine.startup_clear()
        times = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            engine.process(command)
            times.append(time.perf_counter() - t0)
    print(
        f"  in-process TpmEngine.process(GetRandom(32)), no socket, no ESAPI: "
        f"{statistics.median(times) * 1e6:.1f} us (the rest of the vtpm figure is socket, "
        f"event loop and client)"
    )


def has_nv_index(port: int, index: int) -> bool:
    esapi = ESAPI(TCTILdr("swtpm", f"host=127.0.0.1,port={port}"))
    try:
        esapi.tr_from_tpmpublic(index)
        return True
    except Exception:
        return False
    finally:
        esapi.close()


def provisioning_time(repeats: int) -> None:
    print(
        f"process start -> provisioned and serving with both EK certificates, median of {repeats}:"
    )
    ours: list[float] = []
    for _ in range(repeats):
        proc, port, elapsed = start_vtpm()
        try:
            if not all(has_nv_index(port, i) for i in (RSA_EK_CERT_INDEX, ECC_EK_CERT_INDEX)):
                print(
                    "  vtpm serve: figure unavailable (EK certificates missing: manufacture "
                    "is not ready)"
                )
                return
            ours.append(elapsed)
        finally:
            stop(proc)
    theirs: list[float] = []
    setup_only: list[float] = []
    if shutil.which("swtpm_setup"):
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as state:
                t0 = time.perf_counter()
                subprocess.run(
                    [
                        "swtpm_setup",
                        "--tpm2",
                        "--create-ek-cert",
                        "--tpmstate",
                        state,
                        "--overwrite",
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                setup_only.append(time.perf_counter() - t0)
                with swtpm_server(Path(state)) as (port, _pid):
                    theirs.append(time.perf_counter() - t0)
                    assert has_nv_index(port, RSA_EK_CERT_INDEX)
                    assert has_nv_index(port, SWTPM_ECC_EK_CERT_INDEX)
    o = statistics.median(ours) * 1e3
    print(f"  vtpm serve (manufacture in memory, RSA-2048 + ECC P-256 EKs, CA):  {o:7.0f} ms")
    if theirs:
        s = statistics.median(theirs) * 1e3
        print(
            f"  swtpm_setup --create-ek-cert, then swtpm socket listening:      {s:7.0f} ms "
            f"(swtpm_setup alone {statistics.median(setup_only) * 1e3:.0f} ms)"
        )
        verdict = "met" if o <= s else "MISSED"
        print(f"  ratio vtpm/swtpm {o / s:.2f}  target <= {TARGET_RATIO:.1f} {verdict}")
    else:
        print("  swtpm_setup not installed: no comparison")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workload (under ~30 s)")
    args = parser.parse_args()
    if shutil.which("swtpm") is None:
        print("swtpm is not installed: nothing to compare against")
        return 0
    if args.quick:
        command_latency(batches=12, iterations=15)
        provisioning_time(repeats=1)
    else:
        command_latency(batches=40, iterations=30)
        provisioning_time(repeats=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
