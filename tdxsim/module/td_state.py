"""TD-scope and vCPU-scope state the module keeps (TDCS and TDVPS, the parts this model needs).

Measurement registers live here so a TDREPORT builder can read them through `TdState.info()`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tdxdefs.tdcall import MAX_L2_VMS, RTMR_COUNT, SHA384_SIZE
from tdxsim.module.attestation_interface import TdInfo
from tdxsim.module.vmcs import L2Vmcs

ZERO48 = bytes(SHA384_SIZE)


@dataclass
class VeInfo:
    """The #VE information TDG.VP.VEINFO.GET returns once."""

    exit_reason: int
    qualification: int
    gla: int
    gpa: int
    instr_length: int = 0
    instr_info: int = 0


@dataclass
class VcpuState:
    """Per-vCPU module state: L2 VMCSes, #VE info and L1's virtual-interrupt state."""

    index: int
    num_l2_vms: int
    vmcs: dict[int, L2Vmcs] = field(default_factory=dict)
    ve_info: VeInfo | None = None
    l1_rvi: int = 0
    l1_ppr: int = 0

    def __post_init__(self) -> None:
        self.vmcs = {vm: L2Vmcs(vm) for vm in range(1, self.num_l2_vms + 1)}

    def l1_interrupt_deliverable(self) -> bool:
        """L1 RVI[7:4] > PPR[7:4]: TDG.VP.ENTER must return TDX_PENDING_INTERRUPT."""
        return (self.l1_rvi >> 4) > (self.l1_ppr >> 4)


@dataclass
class TdState:
    """TDCS contents the model keeps: identity, measurements and partitioning config."""

    attributes: int = 0
    xfam: int = 0
    num_l2_vms: int = 1
    max_vcpus: int = 1
    mrtd: bytes = ZERO48
    mrconfigid: bytes = ZERO48
    mrowner: bytes = ZERO48
    mrownerconfig: bytes = ZERO48
    rtmr: list[bytes] = field(default_factory=lambda: [ZERO48] * RTMR_COUNT)
    finalized: bool = False
    notify_enables: int = 0
    vcpus: list[VcpuState] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.num_l2_vms <= MAX_L2_VMS:
            raise ValueError(f"NUM_L2_VMS {self.num_l2_vms} outside 0..{MAX_L2_VMS}")

    def add_vcpu(self) -> VcpuState:
        """Create the next vCPU (TDH.VP.CREATE/INIT)."""
        if len(self.vcpus) >= self.max_vcpus:
            raise ValueError(f"TD already has MAX_VCPUS={self.max_vcpus} vCPUs")
        vcpu = VcpuState(len(self.vcpus), self.num_l2_vms)
        self.vcpus.append(vcpu)
        return vcpu

    def extend_rtmr(self, index: int, digest: bytes) -> None:
        """RTMR[index] = SHA-384(RTMR[index] || digest)."""
        self.rtmr[index] = hashlib.sha384(self.rtmr[index] + digest).digest()

    def info(self) -> TdInfo:
        """A snapshot for TDREPORT builders."""
        r = self.rtmr
        return TdInfo(
            attributes=self.attributes,
            xfam=self.xfam,
            mrtd=self.mrtd,
            mrconfigid=self.mrconfigid,
            mrowner=self.mrowner,
            mrownerconfig=self.mrownerconfig,
            rtmr=(r[0], r[1], r[2], r[3]),
            num_l2_vms=self.num_l2_vms,
            num_vcpus=len(self.vcpus),
        )
