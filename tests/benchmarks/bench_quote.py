"""Benchmark: one TD quote verification (signatures and PCK chain), and one full appraisal with
collateral (CRLs, TCB info, QE identity, TCB status), next to dcap-qvl's verification of the
same quote and collateral.

Run: python tests/benchmarks/bench_quote.py [--quick]. Prints medians and ratios; never fails on
a missed target.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import dcap_qvl  # noqa: E402

from tdxsim.attestation.collateral import SimulatedCollateral  # noqa: E402
from tdxsim.attestation.quoting import SimulatedAttestation  # noqa: E402
from tdxsim.module.attestation_interface import TdInfo  # noqa: E402
from tests.support.dcap import as_intel_vendor  # noqa: E402
from verifier.appraisal import appraise  # noqa: E402
from verifier.collateral import Collateral  # noqa: E402
from verifier.quote import verify_quote  # noqa: E402

TARGET_MS = 20.0  # one full appraisal with collateral
ISSUED = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
AT = ISSUED + datetime.timedelta(hours=1)
TD = TdInfo(
    attributes=0x10000000,
    xfam=0xE7,
    mrtd=b"\x11" * 48,
    mrconfigid=b"\x22" * 48,
    mrowner=b"\x33" * 48,
    mrownerconfig=b"\x44" * 48,
    rtmr=(b"\xa0" * 48,) * 4,
    num_l2_vms=1,
    num_vcpus=1,
)


def median_ms(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    repeats = 20 if parser.parse_args().quick else 200
    sim = SimulatedAttestation.create(b"bench quote")
    quote = as_intel_vendor(
        sim.quoting.quote(sim.reports.tdreport(TD, bytes(64))), sim.quoting.attestation_key
    )
    text = SimulatedCollateral(sim.quoting.pck, issue_date=ISSUED).to_json()
    root, root_der = sim.quoting.pck.root, sim.quoting.trusted_root_der
    theirs = dcap_qvl.QuoteCollateralV3.from_json(text)
    now = int(AT.timestamp())

    def full() -> None:
        result = appraise(quote, root, collateral=Collateral.from_json(text), at=AT)
        assert result.ok, result.failure

    signatures = median_ms(lambda: verify_quote(quote, root, at=AT), repeats)
    ours = median_ms(full, repeats)
    dcap = median_ms(lambda: dcap_qvl.verify_with_root_ca(quote, theirs, root_der, now), repeats)
    print(f"quote signatures and PCK chain   {signatures:8.2f} ms")
    print(
        f"full appraisal with collateral   {ours:8.2f} ms   target < {TARGET_MS:.0f} ms: "
        f"{'met' if ours < TARGET_MS else 'MISSED'}"
    )
    print(f"dcap-qvl verify, same inputs     {dcap:8.2f} ms   ours/theirs {ours / dcap:5.1f}x")


if __name__ == "__main__":
    main()
