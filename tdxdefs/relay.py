"""The vTPM relay path's shared definitions (DESIGN.md, "The vTPM command path"): the host's ring
page, each L2's mailbox page, and the vectors and ports that ring their doorbells.

    host relay --(ring page, shared)--> L1 --(mailbox page, L2-private)--> L2 firmware --CRB--> L1
               <-- HLT (or OUT RELAY_NOTIFY_PORT) -- L1 <-- HLT (or OUT L2_DOORBELL_PORT) --

The host writes a command into the ring page (a page L1 converted to shared), sets `state` to
COMMAND and posts RELAY_VECTOR to L1. L1 copies the command out once, checks it, writes it into
the mailbox of the L2 the ring names and posts L2_RELAY_VECTOR to that L2. The L2 wakes from HLT,
runs the command through its TPM CRB, writes the response into its mailbox and either halts (L1
takes an HLT exit with the mailbox answered as the doorbell; our firmware does this, an exit
fewer) or writes the byte 1 to L2_DOORBELL_PORT. L1 copies the response out once and writes it
into the ring with `state` RESPONSE (or ERROR, `length` 0) and the command's `sequence` and
`vm` (0 and 0 for a ring L1 refused).

L1 rings the host the same way one level up. When it has nothing else to run it halts
(TDG.VP.VMCALL<Instruction.HLT>) and that is the doorbell: at an HLT with a command in flight
the host copies the ring once; a header still exactly as the host posted it means the command is
not answered yet, anything else is L1's answer, checked on the copy (magic, version, vm,
sequence, state RESPONSE or ERROR, length within the page) and refused if any field is wrong. An
L1 that will run something else before it halts (another L2 runnable) rings first with a
TDVMCALL<IO> write of the byte 1 to RELAY_NOTIFY_PORT, and the host takes the answer there with
the same checks. So a relayed command costs one TD exit in the common case, two with the notify.
No L2 ever sees shared memory; L1 never reads shared or L2-writable memory twice; the host reads
the ring once per doorbell.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from tdxdefs.layout import Layout

RING_MAGIC = 0x524D5054  # "TPMR" little-endian
RING_VERSION = 1
RING_PAGE_SIZE = 4096
RELAY_VECTOR = 0x51  # host -> L1: a command is in the ring
L2_RELAY_VECTOR = 0x52  # L1 -> L2: a command is in the mailbox
L2_DOORBELL_PORT = 0xF5  # L2 -> L1: the response is in the mailbox
RELAY_NOTIFY_PORT = 0xF6  # L1 -> host (TDVMCALL<IO> write): the response is in the ring,
# for an L1 that does not halt next (otherwise its HLT tells the host)
MAX_TPM_MESSAGE = RING_PAGE_SIZE - 32  # what one ring or mailbox page carries after its header


class RelayKind(IntEnum):
    """What the host asks in the ring."""

    TPM_COMMAND = 0  # run the message on the L2's vTPM
    POWER_CYCLE = 1  # reset that vTPM and manufacture it again (only with --dev-platform-port)


class RelayState(IntEnum):
    """Who owns the ring page or a mailbox now."""

    IDLE = 0
    COMMAND = 1  # a command is waiting for the other side
    RESPONSE = 2  # a response is waiting for the side that sent the command
    ERROR = 3  # L1 refused the command; `length` is 0


@dataclass(frozen=True, slots=True)
class RingHeader(Layout):
    """The first 32 bytes of the host's ring page (little-endian); the message follows."""

    NAME: ClassVar[str] = "relay ring header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("magic", "I"),
        ("version", "H"),
        ("vm", "H"),  # which L2's vTPM (1..3)
        ("sequence", "I"),  # the host's command number; L1's response repeats it
        ("state", "I"),
        ("length", "I"),  # bytes of the message after the header
        ("locality", "I"),
        ("kind", "I"),  # RelayKind
        ("reserved", "4s"),
    )
    SIZE: ClassVar[int] = 32

    magic: int
    version: int
    vm: int
    sequence: int
    state: int
    length: int
    locality: int
    kind: int
    reserved: bytes


@dataclass(frozen=True, slots=True)
class MailboxHeader(Layout):
    """The first 32 bytes of an L2's mailbox page (L1 and that L2 only); the message follows."""

    NAME: ClassVar[str] = "relay mailbox header"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("state", "I"),
        ("length", "I"),
        ("sequence", "I"),
        # L1's count of the changes to this L2's TPM CRB the L2 did not make (a vTPM power cycle
        # back to Idle, a vTPM failure): while it is what it was at a command that left the CRB
        # Ready, the CRB is still Ready, and the L2's driver starts the next command at once.
        ("crb_epoch", "I"),
        ("reserved", "16s"),
    )
    SIZE: ClassVar[int] = 32

    state: int
    length: int
    sequence: int
    crb_epoch: int
    reserved: bytes


# The ring page: 4 KiB of TD RAM above L2 RAM (0x1600000..0x1C00000) and below the end of the
# project's 32 MiB TD; L1 converts it to shared (MapGPA of RELAY_RING_GPA | shared bit) when it
# serves, and the host touches it only after that conversion.
RELAY_RING_GPA = 0x1E00000
# Launch options the host passes in the IGVM command-line parameter (IGVM_VHT_COMMAND_LINE,
# NUL-terminated ASCII, space-separated) at this offset of the project's parameter area; L1
# extends the whole parameter area into RTMR0, so the options are measured.
LAUNCH_COMMAND_LINE_OFFSET = 0x800
LAUNCH_OPTION_SERVE = "tdp.relay=serve"  # L1 shares the ring page and serves the relay
LAUNCH_OPTION_DEV_PLATFORM_PORT = "tdp.dev-platform-port=1"  # power cycles are relayed
# With that option L1 also extends this event (EV_EVENT_TAG, SHA-384 of the bytes) into
# RTMR3 before any quote: a verifier sees that the host could power-cycle (reset) the vTPM.
DEV_PLATFORM_PORT_RTMR = 3
DEV_PLATFORM_PORT_EVENT = b"vTPM relay: development platform port (power cycles from the host)\0"
