"""The vTPM relay path inside the TD: the host's ring page -> L1 -> the L2's mailbox -> the L2
firmware's CRB driver -> L1's CRB -> a real libtpms vTPM, and back. The test plays the host: it
writes the ring page through the host's shared-only view, rings L1's relay vector and reads the
answer L1 writes back."""

from __future__ import annotations

import pytest

from orchestrator.firmware import Firmware
from svsm.l2guest import L2Guest, L2State, SupportPage
from svsm.relay import parse_ring
from tdxdefs.relay import (
    L2_RELAY_VECTOR,
    MAX_TPM_MESSAGE,
    RELAY_NOTIFY_PORT,
    RELAY_RING_GPA,
    RING_MAGIC,
    RING_VERSION,
    MailboxHeader,
    RelayKind,
    RelayState,
    RingHeader,
)
from tests.support.svsm_relay import GET_RANDOM_16, SHARED_BIT, Served
from vtpm.engine import TpmEngine, response_code


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
        mailbox, MailboxHeader(int(RelayState.RESPONSE), 10, 41, 0, bytes(16)).pack()
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


def test_the_l2_rings_by_halting_with_its_answer(firmware: Firmware, engine: TpmEngine) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    before = dict(guest.outcome.exits)
    head = served.command(GET_RANDOM_16)
    assert head.state == RelayState.RESPONSE and response_code(served.answer(head)) == 0
    after = guest.outcome.exits
    assert after["HLT"] - before.get("HLT", 0) == 1
    assert after["IO"] - before.get("IO", 0) == 0  # no doorbell write: the halt rang
    assert served.relay.inflight == {}


def ring_state(served: Served) -> int:
    return RingHeader.unpack(served.host.read(RELAY_RING_GPA | SHARED_BIT, RingHeader.SIZE)).state


def test_a_halt_before_the_answer_or_with_nothing_in_flight_rings_nothing(
    firmware: Firmware, engine: TpmEngine
) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    mailbox = guest.layout.page(SupportPage.MAILBOX)
    log = len(served.pv.log)
    served.relay.halted(guest)  # nothing in flight: an idle halt
    served.relay.inflight[1] = 42
    served.pv.memory.write(
        mailbox, MailboxHeader(int(RelayState.COMMAND), 12, 42, 0, bytes(16)).pack()
    )
    served.relay.halted(guest)  # halted, but the command is not answered yet
    assert served.relay.inflight == {1: 42} and ring_state(served) == RelayState.IDLE
    assert len(served.pv.log) == log and served.relay.relayed == 0
    answer = bytes.fromhex("80010000000a00000000")
    served.pv.memory.write(mailbox + MailboxHeader.SIZE, answer)
    served.pv.memory.write(
        mailbox, MailboxHeader(int(RelayState.RESPONSE), len(answer), 42, 0, bytes(16)).pack()
    )
    served.relay.halted(guest)
    assert served.relay.inflight == {} and ring_state(served) == RelayState.RESPONSE
    assert served.answer(RingHeader.unpack(served.host.read(RELAY_RING_GPA | SHARED_BIT, 32))) == (
        answer
    )


def test_a_lying_answer_found_at_a_halt_is_refused(firmware: Firmware, engine: TpmEngine) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    mailbox = guest.layout.page(SupportPage.MAILBOX)
    served.relay.inflight[1] = 42
    served.pv.memory.write(
        mailbox,
        MailboxHeader(int(RelayState.RESPONSE), MAX_TPM_MESSAGE + 1, 42, 0, bytes(16)).pack(),
    )
    served.relay.halted(guest)
    assert ring_state(served) == RelayState.ERROR and served.relay.refused == 1
    assert f"length {MAX_TPM_MESSAGE + 1}" in served.pv.log[-1]
    assert served.command(GET_RANDOM_16).state == RelayState.RESPONSE  # still serving


def l2_exits(guest: L2Guest) -> int:
    return sum(guest.outcome.exits.values())


def test_a_relayed_command_skips_the_crb_status_read_until_l1_changes_the_crb(
    firmware: Firmware, engine: TpmEngine
) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    served.command(GET_RANDOM_16)
    before = l2_exits(guest)
    assert served.command(GET_RANDOM_16).state == RelayState.RESPONSE
    assert l2_exits(guest) - before == 4  # START, its poll, the status, HLT
    epoch = guest.crb.epoch
    guest.crb.reset()  # what a vTPM power cycle does to the CRB: Idle, locality released
    assert guest.crb.epoch == epoch + 1
    before = l2_exits(guest)
    head = served.command(GET_RANDOM_16)
    assert head.state == RelayState.RESPONSE and response_code(served.answer(head)) == 0
    assert l2_exits(guest) - before > 4  # the driver saw the new epoch and went Ready again
    before = l2_exits(guest)
    served.command(GET_RANDOM_16)
    assert l2_exits(guest) - before == 4
    assert guest.crb.refused == 0


def test_a_crb_change_l1_does_not_announce_fails_one_command_cleanly(
    firmware: Firmware, engine: TpmEngine
) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    served.command(GET_RANDOM_16)
    guest.crb.reset()
    guest.crb.epoch -= 1  # as if L1 had not counted the change: the L2 believes it is Ready
    head = served.command(GET_RANDOM_16)
    assert head.state == RelayState.ERROR  # the status after START says Idle: no response
    assert "START in state idle" in guest.crb.refusals[-1]
    head = served.command(GET_RANDOM_16)  # the driver starts over from the locality request
    assert head.state == RelayState.RESPONSE and response_code(served.answer(head)) == 0


def test_a_failed_vtpm_is_seen_before_start(firmware: Firmware, engine: TpmEngine) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    served.command(GET_RANDOM_16)
    guest.crb.fail("the vTPM went away")
    commands = guest.crb.commands
    assert served.command(GET_RANDOM_16).state == RelayState.ERROR
    assert guest.crb.commands == commands and guest.crb.refused == 0  # no START was written


@pytest.mark.parametrize("ring", ["halt", "doorbell"])
def test_an_answer_with_reserved_bytes_set_is_refused_and_the_l2_goes_on(
    firmware: Firmware, engine: TpmEngine, ring: str
) -> None:
    served = Served(firmware, engine)
    (guest,) = served.guests
    mailbox = guest.layout.page(SupportPage.MAILBOX)
    served.relay.inflight[1] = 42
    bad = MailboxHeader(int(RelayState.RESPONSE), 10, 42, 0, b"\1" + bytes(15)).pack()
    served.pv.memory.write(mailbox, bad)
    (served.relay.halted if ring == "halt" else served.relay.doorbell)(guest)
    assert ring_state(served) == RelayState.ERROR and served.relay.inflight == {}
    assert "reserved" in served.pv.log[-1] and "command 42" in served.pv.log[-1]
    assert guest.running
    assert served.command(GET_RANDOM_16).state == RelayState.RESPONSE


class NotifyPort:
    """The host's RELAY_NOTIFY_PORT, counting L1's notifies and what the ring held at each."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.states: list[int] = []
        served.pv.td.host.attach_io(RELAY_NOTIFY_PORT, 1, self)

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.states.append(ring_state(self.served))


def test_l1_that_halts_next_answers_without_a_notify(firmware: Firmware, engine: TpmEngine) -> None:
    served = Served(firmware, engine)
    notify = NotifyPort(served)
    for _ in range(3):
        head = served.command(GET_RANDOM_16)
        assert head.state == RelayState.RESPONSE and response_code(served.answer(head)) == 0
    served.command(b"", kind=RelayKind.POWER_CYCLE)  # answered by L1 alone: no handler, ERROR
    served.ring(bytes(RingHeader.SIZE))  # refused by L1: ERROR
    assert ring_state(served) == RelayState.ERROR
    # every answer waits in the ring for the HLT that comes next (the host takes it there)
    assert notify.states == [] and served.relay.notified == 0
    assert all(guest.halted for guest in served.guests)


def test_l1_with_another_l2_runnable_notifies_with_the_answer_in_the_ring(
    firmware: Firmware, engine: TpmEngine
) -> None:
    served = Served(firmware, engine, count=2)
    notify = NotifyPort(served)
    first, second = served.guests
    second.post_interrupt(L2_RELAY_VECTOR)  # woken with an empty mailbox: it halts again
    head = served.command(GET_RANDOM_16)  # L1 enters the second L2 after the first answers
    assert head.state == RelayState.RESPONSE and response_code(served.answer(head)) == 0
    assert notify.states == [RelayState.RESPONSE] and served.relay.notified == 1
    assert first.halted and second.halted and second.running
    head = served.command(GET_RANDOM_16)  # both halted again: the HLT is the doorbell
    assert head.state == RelayState.RESPONSE and notify.states == [RelayState.RESPONSE]
