"""Where the L2 firmware leaves its measured-boot record, so a verifier reads it through the TPM.

The L2 firmware measures its payload (a blob carried in the firmware image) with TPM2_PCR_Event
into `PAYLOAD_PCR`, and keeps a TCG crypto-agile event log (TCG PC Client Platform Firmware
Profile, section 10: a Spec ID event in the SHA-1 TCG_PCClientPCREvent format, then
TCG_PCR_EVENT2 records with SHA-256 and SHA-384 digests) of L1's events (as the L1VTPM Detect
service handed them over) followed by its own. It writes that log into the NV index
`EVENT_LOG_NV_INDEX`, defined under the platform hierarchy (TPMA_NV_PLATFORMCREATE, so
TPM2_Clear by an owner leaves it), its size the log's exact length.

The index lies in the platform range of the TCG "Registry of Reserved TPM 2.0 Handles and
Localities" (0x01400000-0x017FFFFF), where the platform firmware, which the L2 firmware is to its
vTPM, defines its own indices. Not 0x01400001: Azure's vTPM-in-TD scheme keeps its hardware
report there, and tools written for that scheme read whatever that index holds as one.

The details a reader of the index can rely on (l2-firmware/src/measure.c follows them; a test
checks its C constants against these):
- attributes `EVENT_LOG_NV_ATTRIBUTES`: readable with the index's own (empty) authorization, the
  owner's or the platform's; written by the platform only, then write-locked (TPMA_NV_WRITEDEFINE
  and TPM2_NV_WriteLock) until the index is undefined, which nobody can do afterwards: the
  firmware then disables the platform hierarchy (TPM2_HierarchyControl) until TPM2_Startup(CLEAR);
- the firmware's own record is the last: PCR `PAYLOAD_PCR`, type EV_IPL (`PAYLOAD_EVENT_TYPE`),
  its event data the payload's bytes themselves (at most `PAYLOAD_MAX`, TPM2B_EVENT's limit);
- the log is at most `EVENT_LOG_MAX` bytes (TPM_PT_NV_INDEX_MAX of libtpms) and is written in
  chunks of `NV_WRITE_MAX` (TPM_PT_NV_BUFFER_MAX); a log that would not fit is never started:
  the firmware says so on its console and extends nothing.
"""

from __future__ import annotations

from tdxdefs.eventlog import EventType
from tdxdefs.tpm import TpmaNv

EVENT_LOG_NV_INDEX = 0x01400100
PAYLOAD_PCR = 4


EVENT_LOG_NV_ATTRIBUTES = (
    TpmaNv.PLATFORMCREATE
    | TpmaNv.PPWRITE
    | TpmaNv.WRITEDEFINE
    | TpmaNv.PPREAD
    | TpmaNv.OWNERREAD
    | TpmaNv.AUTHREAD
    | TpmaNv.NO_DA
)
PAYLOAD_EVENT_TYPE = EventType.EV_IPL
PAYLOAD_MAX = 1024  # TPM2B_EVENT, the event data of TPM2_PCR_Event (TPM 2.0 Library, Part 2)
EVENT_LOG_MAX = 2048
NV_WRITE_MAX = 1024
