/* The records of a crypto-agile TCG event log (TCG PC Client Platform Firmware Profile, section
 * 10.2): the Spec ID event in the SHA-1 TCG_PCClientPCREvent format (section 10.4.5.1,
 * TCG_EfiSpecIDEvent "Spec ID Event03" declaring SHA-256 and SHA-384), then TCG_PCR_EVENT2 records
 * carrying one digest of each, SHA-256 first. Every field is little-endian. */
#include "l2fw.h"

#define EV_NO_ACTION 3u
#define TPM_ALG_SHA256 0x000Bu
#define TPM_ALG_SHA384 0x000Cu
#define PCR_EVENT_HEADER 32u       /* pcrIndex, eventType, SHA-1 digest, eventDataSize */
#define SPEC_ID_SIZE 37u           /* signature .. numberOfAlgorithms, 2 algorithms, vendorInfoSize */
#define PLATFORM_CLASS_CLIENT 0u
#define SPEC_VERSION_MAJOR 2u
#define UINTN_SIZE_64BIT 2u
#define DIGESTS 2u
#define EVENT2_HEAD 12u            /* pcrIndex, eventType, digests.count */

static const u8 signature[16] = "Spec ID Event03";

static u32 put(u8 *out, u32 at, u32 value, u32 bytes) {
    for (u32 i = 0; i < bytes; i++) {
        out[at + i] = (u8)(value >> (8 * i));
    }
    return at + bytes;
}

static u32 put_bytes(u8 *out, u32 at, const u8 *data, u32 size) {
    for (u32 i = 0; i < size; i++) {
        out[at + i] = data[i];
    }
    return at + size;
}

static u32 get(const u8 *p, u32 bytes) {
    u32 value = 0;
    for (u32 i = bytes; i-- > 0;) {
        value = value << 8 | p[i];
    }
    return value;
}

u32 eventlog_spec_id(u8 *out) {
    u32 at = put(out, 0, 0, 4); /* PCR 0 */
    at = put(out, at, EV_NO_ACTION, 4);
    for (u32 i = 0; i < 20; i++) {
        out[at++] = 0;
    }
    at = put(out, at, SPEC_ID_SIZE, 4);
    at = put_bytes(out, at, signature, sizeof(signature));
    at = put(out, at, PLATFORM_CLASS_CLIENT, 4);
    at = put(out, at, 0, 1); /* specVersionMinor */
    at = put(out, at, SPEC_VERSION_MAJOR, 1);
    at = put(out, at, 0, 1); /* specErrata */
    at = put(out, at, UINTN_SIZE_64BIT, 1);
    at = put(out, at, DIGESTS, 4);
    at = put(out, at, TPM_ALG_SHA256, 2);
    at = put(out, at, SHA256_SIZE, 2);
    at = put(out, at, TPM_ALG_SHA384, 2);
    at = put(out, at, SHA384_SIZE, 2);
    return put(out, at, 0, 1); /* vendorInfoSize */
}

u32 eventlog_event2(u8 *out, u32 pcr, u32 type, const u8 *sha256, const u8 *sha384,
                    const u8 *data, u32 size) {
    u32 at = put(out, 0, pcr, 4);
    at = put(out, at, type, 4);
    at = put(out, at, DIGESTS, 4);
    at = put(out, at, TPM_ALG_SHA256, 2);
    at = put_bytes(out, at, sha256, SHA256_SIZE);
    at = put(out, at, TPM_ALG_SHA384, 2);
    at = put_bytes(out, at, sha384, SHA384_SIZE);
    at = put(out, at, size, 4);
    return put_bytes(out, at, data, size);
}

/* The length of the TCG_PCR_EVENT2 at `record`, or 0 unless it carries exactly one SHA-256 and
 * one SHA-384 digest (the algorithms the Spec ID event declares) and ends within `available`. */
u32 eventlog_event2_size(const u8 *record, u32 available) {
    if (available < EVENT2_HEAD || get(record + 8, 4) != DIGESTS) {
        return 0;
    }
    u32 at = EVENT2_HEAD, seen = 0;
    for (u32 i = 0; i < DIGESTS; i++) {
        if (at + 2 > available) {
            return 0;
        }
        u32 alg = get(record + at, 2);
        u32 bit = alg == TPM_ALG_SHA256 ? 1u : alg == TPM_ALG_SHA384 ? 2u : 0u;
        if (!bit || seen & bit) {
            return 0;
        }
        seen |= bit;
        at += 2 + (bit == 1u ? SHA256_SIZE : SHA384_SIZE);
    }
    if (at + 4 > available) {
        return 0;
    }
    u32 size = get(record + at, 4);
    at += 4;
    return size <= available - at ? at + size : 0;
}
