"""The vTPM relay path inside the TD: the host's ring page -> L1 -> the L2's mailbox -> the L2
firmware's CRB driver -> L1's CRB -> a real libtpms vTPM, and back. The test plays the host: it
writes the ring page through the host's shared-only view, rings L1's relay vector and reads the
answer L1 writes back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchestrator.firmware import Firmware, build_firmware
from svsm.l2guest import L2Guest, L2State, SupportPage
from svsm.relay import Relay, parse_ring
from svsm.scheduler import run_guests
from tdxdefs.relay import (
    MAX_TPM_MESSAGE,
    RELAY_RING_GPA,
    RELAY_VECTOR,
    RING_MAGIC,
    RING_VERSION,
    MailboxHeader,
    RelayKind,
    RelayState,
    RingHeader,
)
from tests.support.svsm_td import Paravisor
from vtpm.engine import TpmEngine, response_code

GET_RANDOM_16 = bytes.fromhex("80010000000c0000017b0010")
SHARED_BIT = 1 << 47


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Firmware:
    return build_firmware(output=tmp_path_factory.mktemp("fw") / "l2-firmware.bin")


@pytest.fixture(scope="module")
def engine() -> Iterator[TpmEngine]:
    eng = TpmEngine()
    try:
        eng.power_on()
        eng.startup_clear()
        yield eng
    finally:
        eng.close()


class Served:
    """A TD with one serving L2 (our firmware) and L1's relay, the test as the host."""

    def __init__(self, firmware: Firmware, engine: TpmEngine, count: int = 1) -> None:
        self.pv = Paravisor(count)
        self.pv.memory.accept(RELAY_RING_GPA, 0x1000)
        ring = self.pv.memory.share(RELAY_RING_GPA, 0x1000)
        images = {vm: firmware.image for vm in range(1, count + 1)}
        self.guests = self.pv.guests(
            images, {1: engine.process}, serve_relay=True, doorbell=self._doorbell
        )
        by_vm = {g.vm: g for g in self.guests}
        self.relay = Relay(self.pv.tdcall, self.pv.memory, ring, by_vm, self.pv.log.append)
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


def test_commands_reach_the_vtpm_through_the_l2_and_back(
    firmware: Firmware, engine: TpmEngine
) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    assert "L2 firmware: serving the TPM relay" in guest.console.lines
    answers = set()
    for _ in range(5):
        head = served.command(GET_RANDOM_16)
        assert head.state == RelayState.RESPONSE and head.sequence == served.sequence
        response = served.answer(head)
        assert response_code(response) == 0 and len(response) == 10 + 2 + 16
        answers.add(response[12:])
    assert len(answers) == 5  # real random bytes from libtpms each time
    assert served.relay.relayed == 5 and guest.running and guest.halted


def test_exits_per_relayed_command_are_few(firmware: Firmware, engine: TpmEngine) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    before = sum(guest.outcome.exits.values())
    served.command(GET_RANDOM_16)
    assert sum(guest.outcome.exits.values()) - before <= 8


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("magic", 0x1234, "magic 0x1234"),
        ("vm", 3, "L2 3 does not exist"),
        ("length", MAX_TPM_MESSAGE + 1, "past the page"),
        ("state", int(RelayState.RESPONSE), "not COMMAND"),
        ("kind", 9, "kind 9"),
    ],
)
def test_a_lying_ring_is_refused_and_the_relay_goes_on(
    firmware: Firmware, engine: TpmEngine, field: str, value: int, why: str
) -> None:
    served = Served(firmware, engine)
    good = RingHeader(RING_MAGIC, RING_VERSION, 1, 99, int(RelayState.COMMAND), 12, 0, 0, bytes(4))
    values = {name: getattr(good, name) for name, _ in RingHeader.FIELDS} | {field: value}
    served.ring(RingHeader(**values).pack() + GET_RANDOM_16)
    head = RingHeader.unpack(served.host.read(RELAY_RING_GPA | SHARED_BIT, RingHeader.SIZE))
    assert head.state == RelayState.ERROR and served.relay.refused == 1
    assert any(why in line for line in served.pv.log)
    assert served.command(GET_RANDOM_16).state == RelayState.RESPONSE  # still serving


def test_an_oversized_command_from_the_host_gets_a_tpm_error(
    firmware: Firmware, engine: TpmEngine
) -> None:
    served = Served(firmware, engine)
    bogus = bytes.fromhex("80010000ffff0000017b0010") + bytes(100)  # size field 0xffff
    head = served.command(bogus)
    assert head.state == RelayState.RESPONSE
    assert response_code(served.answer(head)) != 0  # the vTPM refuses it; nothing overflows


def test_a_lying_l2_answer_is_refused(firmware: Firmware, engine: TpmEngine) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    mailbox = guest.layout.page(SupportPage.MAILBOX)
    served.relay.inflight[1] = 42  # a command is in flight; the L2 answers with another sequence
    served.pv.memory.write(
        mailbox, MailboxHeader(int(RelayState.RESPONSE), 10, 41, bytes(20)).pack()
    )
    served.relay.doorbell(guest)
    head = RingHeader.unpack(served.host.read(RELAY_RING_GPA | SHARED_BIT, RingHeader.SIZE))
    assert head.state == RelayState.ERROR and "sequence 41 (expected 42)" in served.pv.log[-1]


def test_power_cycle_without_a_handler_is_an_error(firmware: Firmware, engine: TpmEngine) -> None:
    served = Served(firmware, engine)
    assert served.command(b"", kind=RelayKind.POWER_CYCLE).state == RelayState.ERROR


def test_parse_ring_checks_every_field() -> None:
    head = RingHeader(RING_MAGIC, RING_VERSION, 2, 7, int(RelayState.COMMAND), 3, 0, 0, bytes(4))
    command = parse_ring(head.pack() + b"abcdef", range(1, 3))
    assert (command.vm, command.sequence, command.message) == (2, 7, b"abc")
    assert L2State.RUNNING  # the enum the relay checks against
