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
vTPM, defines its own indices.
"""

from __future__ import annotations

EVENT_LOG_NV_INDEX = 0x01400001
PAYLOAD_PCR = 4
