"""The L1 entry point: DESIGN.md boot steps 2-6 in the TD, with a timed line per step on the UART.

2. accept the memory L1 uses, read NUM_L2_VMS (TDG.VM.RD), extend SHA-384 of the IGVM parameter
   area (the launch parameters the host filled in: VP count, memory map) into RTMR0, logged as
   EV_PLATFORM_CONFIG_FLAGS (a choice: no event type is specified for it);
3. start one libtpms vTPM per L2, each in its own worker process from the measured image
   (svsm.vtpm_workers; started first of all, since their start-up is the longest part of the
   boot), and manufacture them in parallel: EKs, the CA key, REPORTDATA = SHA-384(CA public
   key), a TD quote per vTPM from `TdxAttester`, CA and EK certificates in NV;
4. extend the svsm version string (EV_S_CRTM_VERSION) and the whole L2 image (EV_POST_CODE) into
   PCR0 (SHA-256 and SHA-384) of every vTPM, then a separator into RTMR0..3 AFTER the quotes, so
   nothing an L2 does can reproduce an L1 quote;
5. set up NUM_L2_VMS L2 guests with the measured L2 image (svsm.l2guest): done while the vTPM
   workers start and generate their keys, between the two parts of step 3 (the workers take the
   other core); no L2 runs before step 4;
6. run the L2 guests until each exits (svsm.scheduler); their console lines go to the UART as
   `L2[n]| ...`. Each L2's TPM CRB runs commands on that L2's own vTPM worker.

`main` returns a JSON summary the host prints and verifies: NUM_L2_VMS, the CA and EK certificates
(DER hex) of L2 VM 1's vTPM and, under `vtpms`, of every L2's, the CC event log (hex), PCR0
events, per-step timings, the alias map and each L2's outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from svsm.attestation import AttestationBuffers, TdxAttester
from svsm.errors import SvsmError
from svsm.hostmode import HostMode, launch_options
from svsm.l2image import parse_descriptor
from svsm.measurement import PcrEvent, Rtmrs, extend_pcr, pcr_event
from svsm.memory import PAGE_SIZE_2M, Memory
from svsm.pages import PageAllocator
from svsm.platform import Platform
from svsm.tdcall import Tdcall
from svsm.version import SVSM_VERSION
from svsm.vtpm_launcher import StartedLauncher
from svsm.vtpm_workers import VtpmIdentity, VtpmWorkers
from tdxdefs.eventlog import (
    EV_EVENT_TAG,
    EV_PLATFORM_CONFIG_FLAGS,
    EV_POST_CODE,
    EV_S_CRTM_VERSION,
)
from tdxdefs.l2boot import L2_DESCRIPTOR_GPA, TPM_CRB_BASE, TPM_CRB_SIZE, L2ImageDescriptor
from tdxdefs.metadata import NUM_L2_VMS_FIELD
from tdxdefs.relay import (
    DEV_PLATFORM_PORT_EVENT,
    DEV_PLATFORM_PORT_RTMR,
    RELAY_RING_GPA,
    RING_PAGE_SIZE,
)
from tdxdefs.tdcall import PAGE_SIZE, R8, RCX, VP_INFO_GPAW_MASK, Leaf
from tdxdefs.tdvmcall import Tdvmcall
from vtpm import wire

if TYPE_CHECKING:  # imported where first used, once the vTPM workers have started
    from svsm.aliases import AliasManager
    from svsm.l2guest import L2Guest
    from svsm.relay import Relay

# Layout (the project recipe orchestrator/recipes/tdp.yaml places the parameter area here).
PARAMETER_AREA_GPA, PARAMETER_AREA_SIZE = 0x9000, PAGE_SIZE
WORK_GPA, WORK_SIZE = 0x1000000, PAGE_SIZE_2M  # L1's page pool (svsm.pages): accepted at boot
QUOTE_BUFFER_GPA, QUOTE_BUFFER_SIZE = (
    WORK_GPA + WORK_SIZE,
    2 * PAGE_SIZE,
)  # two pages, as Intel's TD-partitioning vTPM prototype uses
NOTIFY_VECTOR = 0x40  # GetQuote completion (SetupEventNotifyInterrupt)
# The L2 side: the measured descriptor naming the L2 image (orchestrator/recipes/tdp.yaml), and
# each L2's RAM: 2 MiB at L2_RAM_GPA + (n - 1) * 2 MiB. L1's support pages for each L2 come from
# the page pool.
L2_RAM_GPA, L2_RAM_SIZE = 0x1600000, PAGE_SIZE_2M
L2_AREA_END = L2_RAM_GPA + 3 * L2_RAM_SIZE
# L1's own memory that no L2 alias may ever reach, named in `--show-aliases`.
L1_OWN = (
    (PARAMETER_AREA_GPA, PARAMETER_AREA_SIZE, "launch parameters"),
    (QUOTE_BUFFER_GPA, QUOTE_BUFFER_SIZE, "GetQuote buffer"),
    (RELAY_RING_GPA, RING_PAGE_SIZE, "host relay ring"),
)
RTMR_LAUNCH = 0
PCR_SVSM = 0
UART_PORT = 0x3F8
IO_SIZE_1, IO_WRITE = 1, 1
MS_PER_S = 1000
MANUFACTURE_STEP = "vTPM manufacture: EKs, CA bound to a TD quote"


class BootStepError(SvsmError):
    """A boot step of L1 failed; the message names the step and the cause."""


class Boot:
    """L1's state across the boot steps."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.tdcall = Tdcall(platform.tdcall)
        self.memory = Memory(platform, self.tdcall)
        self.pages = PageAllocator(self.memory, WORK_GPA, WORK_SIZE)
        self.rtmrs = Rtmrs(self.tdcall, self.memory, self.pages.allocate(1, "RTMR extend digest"))
        self.report_buffers = (
            self.pages.allocate(1, "TDREPORT"),
            self.pages.allocate(1, "REPORTDATA"),
        )
        self.timings: dict[int, tuple[str, float]] = {}  # step number -> (title, ms)
        self.interrupts: Counter[int] = Counter()  # vector -> times taken
        self.gpaw = 0
        self.vcpus = 0
        self.mode = HostMode()
        self.pcr_events: list[PcrEvent] = []
        self.relay: Relay | None = None

    def say(self, line: str) -> None:
        """One line on the debug UART: an IO TDVMCALL (a TD exit) per byte."""
        for byte in (line + "\n").encode():
            self.tdcall.tdvmcall(Tdvmcall.IO, r12=IO_SIZE_1, r13=IO_WRITE, r14=UART_PORT, r15=byte)

    @contextmanager
    def step(self, number: int, title: str, *, done: bool = True) -> Iterator[None]:
        """Time a step, log it on the UART, and turn any failure into a BootStepError naming it.
        A step may run in parts (`done=False` for all but the last): its time is their sum."""
        label = f"svsm step {number} ({title})"
        start = time.perf_counter()
        try:
            yield
        except Exception as exc:
            with contextlib.suppress(Exception):  # the UART is the host's; the real error wins
                self.say(f"{label} FAILED: {exc}")
            raise BootStepError(f"{label} failed: {exc}") from exc
        elapsed = (time.perf_counter() - start) * MS_PER_S + self.timings.get(number, ("", 0))[1]
        self.timings[number] = (title, round(elapsed, 3))
        if done:
            self.say(f"{label} done in {elapsed:.1f} ms")

    def step_timings(self) -> dict[str, float]:
        """Milliseconds per step, "N title" in the order the steps started (a step that runs in
        parts is placed where its first part ran, with the time of all its parts)."""
        return {f"{number} {title}": ms for number, (title, ms) in self.timings.items()}

    def launch(self) -> int:
        """Step 2: TDG.VP.INFO, accept memory, NUM_L2_VMS, the launch parameters into RTMR0."""
        info = self.tdcall.call(Leaf.VP_INFO)
        self.gpaw = info[RCX] & VP_INFO_GPAW_MASK
        self.vcpus = info[R8] & 0xFFFFFFFF
        self.pages.accept()
        num_l2_vms = self.tdcall.vm_rd(NUM_L2_VMS_FIELD)
        area = self.memory.read_measured(PARAMETER_AREA_GPA, PARAMETER_AREA_SIZE)
        self.mode = self.host_mode(area)
        description = f"IGVM parameter area at {PARAMETER_AREA_GPA:#x}, {len(area)} bytes\0"
        self.rtmrs.extend(
            RTMR_LAUNCH,
            EV_PLATFORM_CONFIG_FLAGS,
            description.encode(),
            hashlib.sha384(area).digest(),
        )
        return num_l2_vms

    def start_vtpms(self, workers: VtpmWorkers) -> TdxAttester:
        """Step 3, first part: L1's attester, and every worker asked to manufacture; the workers
        generate their keys while L1 goes on, and wait for L1 to answer their quote requests."""
        self.platform_interrupts()
        quote_buffer = self.memory.share(QUOTE_BUFFER_GPA, QUOTE_BUFFER_SIZE)
        attester = TdxAttester(
            self.tdcall,
            self.memory,
            AttestationBuffers(*self.report_buffers, quote_buffer),
            self.rtmrs.event_log,
        )
        workers.start_manufacture(attester)
        return attester

    def finish_vtpms(self, workers: VtpmWorkers, attester: TdxAttester) -> dict[int, VtpmIdentity]:
        """Step 3, last part: each CA bound to its own TD quote (L1 answers the workers' quote
        and event-log requests now, so the quotes cover RTMRs as step 2 left them); the
        certificates read back from each vTPM's NV."""
        workers.manufacture(attester)
        return {worker.vm: worker.identity() for worker in workers.all}

    def power_cycle(self, workers: VtpmWorkers) -> Callable[[int], bool]:
        """The relay's power-cycle handler: only with the development platform port. The vTPM
        forgets its NV, is manufactured again (a fresh CA bound to a fresh TD quote) and waits
        for TPM2_Startup, as a platform power-on leaves a TPM; its PCRs start from zero."""

        def cycle(vm: int) -> bool:
            return self.mode.dev_platform_port and workers.power_cycle(vm)

        return cycle

    def take_interrupt(self, vector: int) -> None:
        """L1's interrupt handler: record the vector; the relay wakes on its own."""
        self.interrupts[vector] += 1
        if self.relay is not None:
            self.relay.on_interrupt(vector)

    def host_mode(self, parameter_area: bytes) -> HostMode:
        """The host's launch options; a development platform port (power cycles from outside)
        is recorded in RTMR3 as well, so a verifier sees the mode the TD ran in."""
        mode = launch_options(parameter_area)
        if mode.dev_platform_port:
            self.rtmrs.extend(DEV_PLATFORM_PORT_RTMR, EV_EVENT_TAG, DEV_PLATFORM_PORT_EVENT)
        return mode

    def start_relay(self, guests: list[L2Guest]) -> Relay:
        """Convert the ring page to shared and connect it to the L2 mailboxes."""
        from svsm.relay import Relay  # the L2 side: see `main`

        self.memory.accept(RELAY_RING_GPA, PAGE_SIZE)
        ring = self.memory.share(RELAY_RING_GPA, PAGE_SIZE)
        self.relay = Relay(self.tdcall, self.memory, ring, {g.vm: g for g in guests}, self.say)
        for guest in guests:
            guest.doorbell = self.relay.doorbell
            guest.on_halt = self.relay.halted
        return self.relay

    def platform_interrupts(self) -> None:
        """Ask the host to notify GetQuote completion; record the vectors taken."""
        set_handler: Callable[[Callable[[int], None]], None] | None = getattr(
            self.platform, "set_interrupt_handler", None
        )
        if set_handler is not None:
            set_handler(self.take_interrupt)
        self.tdcall.tdvmcall(Tdvmcall.SETUP_EVENT_NOTIFY_INTERRUPT, r12=NOTIFY_VECTOR)

    def seal(self, workers: VtpmWorkers) -> list[PcrEvent]:
        """Step 4: the svsm version and the whole L2 image (`pcr0_events`) into PCR0 of every
        vTPM, then a separator into RTMR0..3, so nothing an L2 does can reproduce an L1 quote."""
        for worker in workers.all:
            tpm = wire.TpmClient(worker)
            for event in self.pcr_events:  # hashed once, in `pcr0_events`
                extend_pcr(tpm, event)
        self.rtmrs.separators()
        return self.pcr_events  # the same events for every vTPM

    def pcr0_events(self, l2_image: bytes) -> list[PcrEvent]:
        """What step 4 extends into PCR0 (computed before: each L2's L1VTPM service reports
        them, and the L2s are set up while the vTPMs are manufactured)."""
        self.pcr_events = [
            pcr_event(PCR_SVSM, EV_S_CRTM_VERSION, SVSM_VERSION.encode() + b"\0"),
            pcr_event(PCR_SVSM, EV_POST_CODE, l2_image),
        ]
        return self.pcr_events

    def l2_image(self) -> bytes:
        """The L2 image named by the measured descriptor, read once from measured memory."""
        descriptor = parse_descriptor(
            self.memory.read_measured(L2_DESCRIPTOR_GPA, L2ImageDescriptor.SIZE)
        )
        return self.memory.read_measured(descriptor.gpa, descriptor.size)

    def l2_guests(
        self, count: int, image: bytes, workers: VtpmWorkers, aliases: AliasManager
    ) -> list[L2Guest]:
        """Step 5: each L2's RAM, paging, image, aliases and entry state; the CRB page, when the
        TD has it as memory, accepted and kept L1's (private MMIO)."""
        from svsm.l1vtpm import L1VtpmService  # the L2 side: see `main`
        from svsm.l2guest import SUPPORT_PAGES, L2Guest, L2Layout

        self.memory.accept(L2_RAM_GPA, L2_AREA_END - L2_RAM_GPA)
        support = {
            vm: self.pages.allocate(SUPPORT_PAGES, f"L2 VM {vm} support pages", l1_only=False)
            for vm in range(1, count + 1)
        }
        for gpa, size, what in (*L1_OWN, *self.pages.l1_regions()):
            aliases.reserve(gpa, size, what)
        if any(base <= TPM_CRB_BASE < base + size for base, size, _ in self.platform.regions):
            self.memory.accept(TPM_CRB_BASE, TPM_CRB_SIZE)
            aliases.reserve(TPM_CRB_BASE, TPM_CRB_SIZE, "TPM CRB registers (private MMIO)")
        guests = []
        for vm in range(1, count + 1):
            layout = L2Layout(
                vm,
                L2_RAM_GPA + (vm - 1) * L2_RAM_SIZE,
                L2_RAM_SIZE,
                support[vm],
            )
            neighbour = L2_RAM_GPA + (vm % count) * L2_RAM_SIZE if count > 1 else 0
            backend = workers.crb_backend(vm)
            guest = L2Guest(
                self.tdcall,
                self.memory,
                aliases,
                layout,
                image,
                self.say,
                tpm=backend,
                probe_gpa=neighbour,
                serve_relay=self.mode.serving,
                service=L1VtpmService(self.pcr_events),
            )
            backend.attach(guest.crb)
            guest.setup()
            guests.append(guest)
        return guests


def main(platform: Platform, started: StartedLauncher | None = None) -> bytes:
    """L1's entry: boot steps 2-6, then the JSON summary for the host. The vTPM workers start
    first and generate their keys while L1 does step 2 and sets up the L2s (step 5); L1 then
    answers their quote requests (step 3) and extends PCR0 and the separators (step 4) before
    any L2 runs. `started`: the launcher `svsm.entry` started, or None to start it here."""
    boot = Boot(platform)
    workers: VtpmWorkers | None = None
    try:
        with boot.step(3, MANUFACTURE_STEP, done=False):  # first: their start-up is the longest
            count = boot.tdcall.vm_rd(NUM_L2_VMS_FIELD)
            workers = VtpmWorkers(count, platform.image_path, started=started)
        boot.say(f"{SVSM_VERSION}: L1 started from the measured image")
        with boot.step(2, "accept memory, NUM_L2_VMS, launch parameters into RTMR0"):
            num_l2_vms = boot.launch()
            boot.say(
                f"  GPAW {boot.gpaw}, {boot.vcpus} vCPU(s); accepted {WORK_SIZE:#x} bytes at "
                f"{WORK_GPA:#x}; NUM_L2_VMS = {num_l2_vms}"
            )
        with boot.step(3, MANUFACTURE_STEP, done=False):
            attester = boot.start_vtpms(workers)
        # The L2 side (guests, exits, the x86 decoder, CRB, relay) is imported only now, so its
        # import runs while the workers start and generate their keys on the other core.
        from svsm.aliases import AliasManager
        from svsm.scheduler import run_guests

        aliases = AliasManager(boot.tdcall, num_l2_vms)
        with boot.step(5, f"set up {num_l2_vms} L2 guest(s): RAM, paging, aliases, VMCS"):
            l2_image = boot.l2_image()
            boot.pcr0_events(l2_image)
            guests = boot.l2_guests(num_l2_vms, l2_image, workers, aliases)
        with boot.step(3, MANUFACTURE_STEP):
            identities = boot.finish_vtpms(workers, attester)
            for vm, made in identities.items():
                worker = workers[vm]
                boot.say(
                    f"  L2 {vm} vTPM (worker pid {worker.pid}, ready after "
                    f"{worker.ready_ms:.1f} ms, manufactured after {worker.manufactured_ms:.1f} "
                    f"ms): EKs {', '.join(made.ek_certificates)}; CA certificate "
                    f"{len(made.ca_certificate)} bytes"
                )
        with boot.step(4, "PCR0: svsm version and L2 image; separators into RTMR0..3"):
            pcr_events = boot.seal(workers)
            digest = hashlib.sha384(l2_image).hexdigest()
            boot.say(f"  L2 image: {len(l2_image)} bytes, SHA-384 {digest[:16]}...")
        if boot.mode.serving:
            run_guests(guests, tdcall=boot.tdcall, until_idle=True)  # self-tests, then relay loops
            relay = boot.start_relay(guests)
            relay.power_cycle = boot.power_cycle(workers)
            relay.expect = workers.expect
            boot.say("  serving the vTPM relay: the host's ring page -> L2 mailboxes -> CRBs")
            run_guests(guests, tdcall=boot.tdcall, poll=relay.service, serving=True)
        with boot.step(6, "run the L2 guests until each exits"):
            exits = run_guests(guests, tdcall=boot.tdcall)
            boot.say(f"  {exits} L2 exits handled")
    finally:
        if workers is not None:
            workers.close()
        elif started is not None:
            started.close()
    vtpms = [
        {
            "vm": vm,
            "ca_certificate": made.ca_certificate.hex(),
            "ek_certificates": {kind: der.hex() for kind, der in made.ek_certificates.items()},
        }
        for vm, made in identities.items()
    ]
    summary: dict[str, Any] = {
        "version": SVSM_VERSION,
        "num_l2_vms": num_l2_vms,
        "ca_certificate": vtpms[0]["ca_certificate"],
        "ek_certificates": vtpms[0]["ek_certificates"],
        "vtpms": vtpms,
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
        "interrupts": {f"{vector:#x}": n for vector, n in sorted(boot.interrupts.items())},
        "timings_ms": boot.step_timings(),
        "alias_map": aliases.table(),
        "l2": [
            {
                "vm": g.vm,
                "state": g.outcome.state.value,
                "exit_code": g.outcome.exit_code,
                "fatal": g.outcome.fatal,
                "exits": dict(g.outcome.exits),
                "console": list(g.console.lines),
            }
            for g in guests
        ],
    }
    return json.dumps(summary).encode()
