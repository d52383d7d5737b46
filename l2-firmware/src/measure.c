/* The measured boot: extend the payload into PAYLOAD_PCR with TPM2_PCR_Event and keep a
 * crypto-agile event log (TCG PC Client Platform Firmware Profile, section 10) of L1's events, as
 * L1VTPM Detect handed them over, followed by the payload's own, in the NV index
 * EVENT_LOG_NV_INDEX (tdxdefs/firmware_log.py), where a verifier reads it through the TPM.
 *
 * The payload event is EV_IPL with the payload itself as its event data: PCR 4 holds the code the
 * platform firmware hands on to (in the conventional-BIOS PC Client profile, the initial program
 * loader measured as EV_IPL); EV_EFI_BOOT_SERVICES_APPLICATION would claim a PE/COFF image and an
 * Authenticode digest, which the payload is not. Its digests are the ones the TPM returns, so
 * the firmware hashes nothing itself. The log's size is checked before anything is extended. */
#include "l2fw.h"

extern const u8 __payload_start[], __payload_end[];

static u8 event_log[EVENT_LOG_MAX];

static int fail(const char *what, u64 value) {
    console_puts("measured boot: FAIL (");
    console_puts(what);
    console_hex(value);
    console_puts(")\n");
    return -1;
}

int measured_boot(void) {
    const u8 *payload = __payload_start;
    u32 payload_size = (u32)(__payload_end - __payload_start);
    u32 own = EVENT2_FIXED_SIZE + payload_size;
    u32 at = eventlog_spec_id(event_log);
    u32 l1_size = 0, events = 0;
    int found = l1vtpm_detect(&events); /* its own Detect: nothing depends on the self-test's */
    if (found < 0) {
        console_line("measured boot: ", "skipped (no L1VTPM service)");
        return 0;
    }
    if (!found) {
        return fail("malformed L1VTPM Detect answer, events=", events);
    }
    int copied = l1vtpm_events(event_log + at, EVENT_LOG_MAX - at - own, &l1_size);
    if (at + l1_size + own > EVENT_LOG_MAX) {
        return fail("event log bytes=", at + l1_size + own);
    }
    if (!copied) {
        return fail("malformed L1 event at log offset ", at);
    }
    at += l1_size;
    u8 sha256[SHA256_SIZE], sha384[SHA384_SIZE];
    u32 rc = tpm_pcr_event(PAYLOAD_PCR, payload, payload_size, sha256, sha384);
    if (rc) {
        return fail("TPM2_PCR_Event rc=", rc);
    }
    at += eventlog_event2(event_log + at, PAYLOAD_PCR, PAYLOAD_EVENT_TYPE, sha256, sha384, payload,
                          payload_size);
    rc = tpm_nv_define_space(EVENT_LOG_NV_INDEX, EVENT_LOG_NV_ATTRIBUTES, at);
    if (rc) {
        return fail("TPM2_NV_DefineSpace rc=", rc);
    }
    for (u32 offset = 0; offset < at; offset += NV_WRITE_MAX) {
        u32 chunk = at - offset < NV_WRITE_MAX ? at - offset : NV_WRITE_MAX;
        rc = tpm_nv_write(EVENT_LOG_NV_INDEX, event_log + offset, chunk, offset);
        if (rc) {
            return fail("TPM2_NV_Write rc=", rc);
        }
    }
    rc = tpm_nv_write_lock(EVENT_LOG_NV_INDEX);
    if (rc) {
        return fail("TPM2_NV_WriteLock rc=", rc);
    }
    rc = tpm_platform_disable();
    if (rc) {
        return fail("TPM2_HierarchyControl rc=", rc);
    }
    console_line("measured boot: ", "ok"); /* short: each console byte is an exit to L1 */
    return 1;
}
