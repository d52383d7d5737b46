"""`Served`: a TD on the module model with one or more serving L2s (the project's firmware) and
L1's relay, the caller as the host. Used by the relay tests and by `bench_relay.py`, which counts
the L2 exits of a relayed command with it."""

from __future__ import annotations

from orchestrator.firmware import Firmware
from svsm.l2guest import L2Guest
from svsm.relay import Relay
from svsm.scheduler import run_guests
from tdxdefs.relay import (
    RELAY_RING_GPA,
    RELAY_VECTOR,
    RING_MAGIC,
    RING_VERSION,
    RelayKind,
    RelayState,
    RingHeader,
)
from tests.support.svsm_td import Paravisor
from vtpm.engine import TpmEngine

GET_RANDOM_16 = bytes.fromhex("80010000000c0000017b0010")
SHARED_BIT = 1 << 47


class Served:
    """A TD with one serving L2 (our firmware) and L1's relay, the test as the host."""

    def __init__(self, firmware: Firmware, engine: TpmEngine, count: int = 1) -> None:
        self.pv = Paravisor(count, private_crb=True)  # as the product image has it
        self.pv.memory.accept(RELAY_RING_GPA, 0x1000)
        ring = self.pv.memory.share(RELAY_RING_GPA, 0x1000)
        images = {vm: firmware.image for vm in range(1, count + 1)}
        self.guests = self.pv.guests(
            images, {1: engine.process}, serve_relay=True, doorbell=self._doorbell
        )
        by_vm = {g.vm: g for g in self.guests}
        self.relay = Relay(self.pv.tdcall, self.pv.memory, ring, by_vm, self.pv.log.append)
        for guest in self.guests:
            guest.on_halt = self.relay.halted
        self.sequence = 0
        self.host = self.pv.td.host.shared  # the host's view: shared GPAs only
        self._run_until_serving()

    def _doorbell(self, guest: L2Guest) -> None:
        self.relay.doorbell(guest)

    def _run_until_serving(self) -> None:
        run_guests(self.guests, max_exits=5000, poll=self.relay.service, until_idle=True)
        for guest in self.guests:
            assert "selftest: pass" in guest.console.lines, self.pv.log

    def ring(self, raw: bytes) -> None:
        self.host.write(RELAY_RING_GPA | SHARED_BIT, raw)
        self.relay.on_interrupt(RELAY_VECTOR)
        run_guests(self.guests, max_exits=5000, poll=self.relay.service, until_idle=True)

    def command(
        self, message: bytes, vm: int = 1, kind: RelayKind = RelayKind.TPM_COMMAND
    ) -> RingHeader:
        self.sequence += 1
        head = RingHeader(RING_MAGIC, RING_VERSION, vm, self.sequence, int(RelayState.COMMAND),
                          len(message), 0, int(kind), bytes(4))  # fmt: skip
        self.ring(head.pack() + message)
        return RingHeader.unpack(self.host.read(RELAY_RING_GPA | SHARED_BIT, RingHeader.SIZE))

    def answer(self, head: RingHeader) -> bytes:
        raw = self.host.read(RELAY_RING_GPA | SHARED_BIT, RingHeader.SIZE + head.length)
        return raw[RingHeader.SIZE :]
