"""What the module asks of the attestation side: a TDREPORT for TDG.MR.REPORT.

Intel TDX Module v1.5 ABI Specification, TDG.MR.REPORT leaf and the TDINFO_STRUCT and
TDREPORT_STRUCT definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class TdInfo:
    """What a TDREPORT builder needs from the TD (the TDINFO_STRUCT fields)."""

    attributes: int
    xfam: int
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    num_l2_vms: int
    num_vcpus: int


class AttestationInterface(Protocol):
    """Builds the 1024-byte TDREPORT_STRUCT for TDG.MR.REPORT."""

    def tdreport(self, td_info: TdInfo, report_data: bytes) -> bytes:
        """Return the TDREPORT for this TD and REPORTDATA."""
        ...
