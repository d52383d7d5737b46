"""The L1 entry point: DESIGN.md boot steps 2-4 in the TD, with a timed line per step on the UART.

2. accept the memory L1 uses, read NUM_L2_VMS (TDG.VM.RD), extend SHA-384 of the IGVM parameter
   area (the launch parameters the host filled in: VP count, memory map) into RTMR0, logged as
   EV_PLATFORM_CONFIG_FLAGS [choice: the reference gives no event type for it];
3. start a libtpms vTPM in this process and manufacture it with `TdxAttester`: EKs, the CA key,
   REPORTDATA = SHA-384(CA public key), TD quote, CA and EK certificates in NV;
4. extend the svsm version string into PCR0 (EV_S_CRTM_VERSION, SHA-256 and SHA-384), then a
   separator into RTMR0..3 AFTER the quote, so nothing later can reproduce the L1 quote.
   (The L2 firmware image is not measured: there is no L2 firmware yet.)

`main` returns a JSON summary the host prints and verifies: NUM_L2_VMS, the CA and EK certificates
(DER hex), the CC event log (hex), PCR0 events and per-step timings. Returning the certificates
this way stands in for the L2 CRB path (L2 reading NV through its TPM) that does not exist yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from svsm.attestation import AttestationBuffers, TdxAttester
from svsm.errors import SvsmError
from svsm.measurement import PcrEvent, Rtmrs, extend_pcr
from svsm.memory import PAGE_SIZE_2M, Memory
from svsm.tdcall import Platform, Tdcall
from tdxdefs.eventlog import EV_PLATFORM_CONFIG_FLAGS, EV_S_CRTM_VERSION
from tdxdefs.metadata import NUM_L2_VMS_FIELD
from tdxdefs.tdcall import PAGE_SIZE
from tdxdefs.tdvmcall import Tdvmcall
from vtpm import wire
from vtpm.engine import TpmEngine
from vtpm.manufacture import ManufactureResult, manufacture

SVSM_VERSION = "tdp-svsm 0.1.0"
# Layout (the project recipe orchestrator/recipes/tdp.yaml places the parameter area here).
PARAMETER_AREA_GPA, PARAMETER_AREA_SIZE = 0x9000, PAGE_SIZE
WORK_GPA, WORK_SIZE = 0x1000000, PAGE_SIZE_2M  # L1's private data: accepted at boot
TDREPORT_GPA = WORK_GPA
REPORTDATA_GPA = WORK_GPA + PAGE_SIZE
RTMR_DIGEST_GPA = WORK_GPA + 2 * PAGE_SIZE
QUOTE_BUFFER_GPA, QUOTE_BUFFER_SIZE = WORK_GPA + WORK_SIZE, 2 * PAGE_SIZE  # ISV: two pages
NOTIFY_VECTOR = 0x40  # GetQuote completion (SetupEventNotifyInterrupt)
RTMR_LAUNCH = 0
PCR_SVSM = 0
UART_PORT = 0x3F8
IO_SIZE_1, IO_WRITE = 1, 1
MS_PER_S = 1000


class BootStepError(SvsmError):
    """A boot step of L1 failed; the message names the step and the cause."""


class Boot:
    """L1's state across the boot steps."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.tdcall = Tdcall(platform.tdcall)
        self.memory = Memory(platform, self.tdcall)
        self.rtmrs = Rtmrs(self.tdcall, self.memory, RTMR_DIGEST_GPA)
        self.timings: dict[str, float] = {}
        self.interrupts: list[int] = []
        self.step_number = 1

    def say(self, line: str) -> None:
        """One line on the debug UART: an IO TDVMCALL (a TD exit) per byte."""
        for byte in (line + "\n").encode():
            self.tdcall.tdvmcall(Tdvmcall.IO, r12=IO_SIZE_1, r13=IO_WRITE, r14=UART_PORT, r15=byte)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Time a step, log it on the UART, and turn any failure into a BootStepError naming it."""
        self.step_number += 1
        label = f"svsm step {self.step_number} ({title})"
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:
            with contextlib.suppress(Exception):  # the UART is the host's; the real error wins
                self.say(f"{label} FAILED: {exc}")
            raise BootStepError(f"{label} failed: {exc}") from exc
        elapsed = (time.perf_counter() - start) * MS_PER_S
        self.timings[title] = round(elapsed, 3)
        self.say(f"{label} done in {elapsed:.1f} ms")

    def launch(self) -> int:
        """Step 2: accept memory, NUM_L2_VMS, the launch parameters into RTMR0."""
        self.memory.accept(WORK_GPA, WORK_SIZE)
        num_l2_vms = self.tdcall.vm_rd(NUM_L2_VMS_FIELD)
        area = self.memory.read_measured(PARAMETER_AREA_GPA, PARAMETER_AREA_SIZE)
        description = f"IGVM parameter area at {PARAMETER_AREA_GPA:#x}, {len(area)} bytes\0"
        self.rtmrs.extend(
            RTMR_LAUNCH,
            EV_PLATFORM_CONFIG_FLAGS,
            description.encode(),
            hashlib.sha384(area).digest(),
        )
        return num_l2_vms

    def vtpm(self, engine: TpmEngine) -> tuple[ManufactureResult, TdxAttester]:
        """Step 3: vTPM manufacture, its CA bound to a TD quote."""
        self.platform_interrupts()
        quote_buffer = self.memory.share(QUOTE_BUFFER_GPA, QUOTE_BUFFER_SIZE)
        attester = TdxAttester(
            self.tdcall,
            self.memory,
            AttestationBuffers(TDREPORT_GPA, REPORTDATA_GPA, quote_buffer),
            self.rtmrs.event_log,
        )
        engine.power_on()
        return manufacture(engine, attester=attester), attester

    def platform_interrupts(self) -> None:
        """Ask the host to notify GetQuote completion; record the vectors taken."""
        set_handler: Callable[[Callable[[int], None]], None] | None = getattr(
            self.platform, "set_interrupt_handler", None
        )
        if set_handler is not None:
            set_handler(self.interrupts.append)
        self.tdcall.tdvmcall(Tdvmcall.SETUP_EVENT_NOTIFY_INTERRUPT, r12=NOTIFY_VECTOR)

    def seal(self, engine: TpmEngine) -> list[PcrEvent]:
        """Step 4: the svsm version into PCR0, then a separator into RTMR0..3."""
        version = extend_pcr(
            wire.TpmClient(engine), PCR_SVSM, EV_S_CRTM_VERSION, SVSM_VERSION.encode() + b"\0"
        )
        self.rtmrs.separators()
        return [version]


def main(platform: Platform) -> bytes:
    """L1's entry: boot steps 2-4, then the JSON summary for the host."""
    boot = Boot(platform)
    boot.say(f"{SVSM_VERSION}: L1 started from the measured image")
    engine = TpmEngine()
    try:
        with boot.step("accept memory, NUM_L2_VMS, launch parameters into RTMR0"):
            num_l2_vms = boot.launch()
            boot.say(f"  accepted {WORK_SIZE:#x} bytes at {WORK_GPA:#x}; NUM_L2_VMS = {num_l2_vms}")
        with boot.step("vTPM manufacture: EKs, CA bound to a TD quote"):
            made, attester = boot.vtpm(engine)
            boot.say(
                f"  EKs {', '.join(made.eks)}; CA certificate {len(made.ca_certificate)} "
                f"bytes in NV {made.ca_nv_indices[0]:#x}; quote {len(made.quote)} bytes"
            )
        with boot.step("PCR0 svsm version, separators into RTMR0..3"):
            pcr_events = boot.seal(engine)
    finally:
        engine.close()
    summary: dict[str, Any] = {
        "version": SVSM_VERSION,
        "num_l2_vms": num_l2_vms,
        "ca_certificate": made.ca_certificate.hex(),
        "ek_certificates": {kind: ek.certificate.hex() for kind, ek in made.eks.items()},
        "cc_event_log": boot.rtmrs.event_log().hex(),
        "pcr_events": [
            {
                "pcr": e.pcr,
                "event_type": e.event_type,
                "data": e.data.hex(),
                "digests": {f"{alg:#06x}": d.hex() for alg, d in e.digests.items()},
            }
            for e in pcr_events
        ],
        "simulated_quote": attester.simulated,
        "quote_waits": attester.waits,
        "interrupts": boot.interrupts,
        "timings_ms": boot.timings,
    }
    return json.dumps(summary).encode()
