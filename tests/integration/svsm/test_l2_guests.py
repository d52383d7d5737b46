"""The paravisor runs L2 guests on the simulated module: our firmware's self-test passes in each of
up to three L2s with disjoint RAM, every attempt to reach what is not its own is refused and
logged, and a hostile L2 is stopped with a report while the others finish."""

from __future__ import annotations

import pytest

from orchestrator.firmware import Firmware
from svsm.aliases import AliasError
from svsm.l2guest import L2State, SupportPage
from svsm.scheduler import run_guests
from tdxdefs.attributes import GpaAttr
from tdxdefs.tdcall import PAGE_SIZE
from tests.support.svsm_td import Paravisor
from vtpm.engine import TpmEngine

SUPPORT = 0x200000
RAM0, RAM_SIZE = 0x400000, 0x200000


def test_one_l2_passes_its_self_test(firmware: Firmware, engine: TpmEngine) -> None:
    pv = Paravisor(1)
    (guest,) = pv.guests({1: firmware.image}, tpms={1: engine.process})
    run_guests([guest])
    assert guest.outcome.state is L2State.EXITED and guest.outcome.exit_code == 0, pv.log
    assert list(guest.console.lines) == [
        "L2 firmware: started as L2 0x1",
        "selftest: cpuid-tdx-vendor ok",
        "selftest: cpuid-tdp-guest ok",
        "selftest: interrupt ok",
        "selftest: code-read-only ok",
        "selftest: mmio-crb-interface ok",
        "selftest: tpm-getrandom ok",
        "selftest: l1vtpm-detect skipped (no L1VTPM service)",
        "selftest: pass",
        "measured boot: skipped (no L1VTPM service)",
    ]
    assert "L2[1]| selftest: pass" in pv.log and "L2 1 exited with code 0" in pv.log
    assert any("refused" in line and "write at GPA 0x400000" in line for line in pv.log)
    assert guest.crb.commands == 1  # TPM2_GetRandom through the CRB, on the real vTPM


def test_three_l2s_are_isolated_and_all_pass(firmware: Firmware) -> None:
    pv = Paravisor(3)
    guests = pv.guests({vm: firmware.image for vm in (1, 2, 3)})
    run_guests(guests)
    for guest in guests:
        assert guest.outcome.exit_code == 0, (guest.vm, guest.console.lines, pv.log)
        assert "selftest: isolation ok" in guest.console.lines
    refusals = [line for line in pv.log if "memory that is not this L2's" in line]
    assert len(refusals) == 3  # each L2's read of its neighbour's RAM
    for vm in (1, 2, 3):  # disjoint RAM: nobody else has an alias of an L2's RAM
        ram = pv.layout(vm).ram_gpa
        assert [pv.aliases.attrs(other, ram) for other in (1, 2, 3) if other != vm] == [
            GpaAttr(0),
            GpaAttr(0),
        ]


def test_alias_map_shows_each_region_once(firmware: Firmware) -> None:
    pv = Paravisor(2)
    pv.guests({1: firmware.image, 2: firmware.image})
    table = "\n".join(pv.aliases.table())
    assert "L2 VM 1 code" in table and "L2 VM 2 TPM CRB buffer" in table
    assert "L2 VM 1 VAPIC (L1 only)" in table
    code_row = next(line for line in table.splitlines() if "L2 VM 1 code" in line)
    assert "R-X" in code_row and "RW" not in code_row.split("RWX", 1)[1]


def test_l1_pages_are_never_aliased(firmware: Firmware) -> None:
    pv = Paravisor(1)
    (guest,) = pv.guests({1: firmware.image})
    vapic = guest.layout.page(SupportPage.VAPIC)
    with pytest.raises(AliasError, match="is L1's"):
        pv.aliases.grant(1, vapic, PAGE_SIZE, GpaAttr.R)
    with pytest.raises(AliasError, match="W\\+X"):
        pv.aliases.grant(1, RAM0, PAGE_SIZE, GpaAttr.R | GpaAttr.W | GpaAttr.XS)
