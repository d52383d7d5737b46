/* The TPM 2.0 commands of the measured boot (TCG TPM 2.0 Library, Part 3: 22.3 TPM2_PCR_Event,
 * 31.3 TPM2_NV_DefineSpace, 31.7 TPM2_NV_Write, 31.9 TPM2_NV_WriteLock, 24.2
 * TPM2_HierarchyControl), sent through the CRB.
 * Each carries one password session with an empty password (TPM_RS_PW): PCR 4 and the platform
 * hierarchy have empty authorization values after TPM2_Startup. Commands and responses are
 * big-endian (Part 1, Marshaling). */
#include "l2fw.h"

#define TPM_ST_SESSIONS 0x8002u
#define TPM_RS_PW 0x40000009u
#define TPM_RH_PLATFORM 0x4000000Cu
#define TPM_CC_HIERARCHY_CONTROL 0x00000121u
#define TPM_CC_NV_DEFINE_SPACE 0x0000012Au
#define TPM_CC_NV_WRITE 0x00000137u
#define TPM_CC_NV_WRITE_LOCK 0x00000138u
#define TPM_CC_PCR_EVENT 0x0000013Cu
#define TPM_ALG_SHA1 0x0004u
#define TPM_ALG_SHA256 0x000Bu
#define TPM_ALG_SHA384 0x000Cu
#define TPM_ALG_SHA512 0x000Du
#define TPM_ALG_SM3_256 0x0012u
#define HEADER 10u /* tag, size, command code or response code */
#define COMMAND_MAX (PAYLOAD_MAX + 64u)
#define RESPONSE_MAX 512u

static u8 command[COMMAND_MAX];
static u8 response[RESPONSE_MAX];
static u32 length;
static u32 answer;

static void put(u32 value, u32 bytes) {
    for (u32 i = bytes; i-- > 0;) {
        command[length++] = (u8)(value >> (8 * i));
    }
}

static void put_bytes(const u8 *data, u32 size) {
    for (u32 i = 0; i < size; i++) {
        command[length++] = data[i];
    }
}

static u32 get(u32 at, u32 bytes) {
    u32 value = 0;
    for (u32 i = 0; i < bytes; i++) {
        value = value << 8 | response[at + i];
    }
    return value;
}

/* The header, the handles (`second` 0 for none) and the password session. */
static void start(u32 code, u32 first, u32 second) {
    length = 0;
    put(TPM_ST_SESSIONS, 2);
    put(0, 4); /* commandSize, set by send() */
    put(code, 4);
    put(first, 4);
    if (second) {
        put(second, 4);
    }
    put(9, 4); /* authorizationSize: the session below */
    put(TPM_RS_PW, 4);
    put(0, 2); /* nonce: empty */
    put(0, 1); /* sessionAttributes */
    put(0, 2); /* password: empty */
}

static u32 send(void) {
    u32 size = length;
    length = 2;
    put(size, 4);
    length = size;
    answer = crb_transmit(command, length, response, RESPONSE_MAX);
    if (answer < HEADER) {
        return TPM_NO_RESPONSE;
    }
    return get(6, 4);
}

static u32 digest_size(u32 alg) {
    switch (alg) {
    case TPM_ALG_SHA1:
        return 20;
    case TPM_ALG_SHA256:
    case TPM_ALG_SM3_256:
        return 32;
    case TPM_ALG_SHA384:
        return 48;
    case TPM_ALG_SHA512:
        return 64;
    default:
        return 0;
    }
}

/* TPM2_PCR_Event: the TPM hashes `data` in every active bank and extends `pcr`; the SHA-256 and
 * SHA-384 digests come back from its TPML_DIGEST_VALUES (after the u32 parameterSize). */
u32 tpm_pcr_event(u32 pcr, const u8 *data, u32 size, u8 *sha256, u8 *sha384) {
    if (size > PAYLOAD_MAX) {
        return TPM_NO_RESPONSE;
    }
    start(TPM_CC_PCR_EVENT, pcr, 0);
    put(size, 2);
    put_bytes(data, size);
    u32 rc = send();
    if (rc) {
        return rc;
    }
    if (answer < HEADER + 8) {
        return TPM_NO_RESPONSE;
    }
    u32 count = get(HEADER + 4, 4), at = HEADER + 8, found = 0;
    for (u32 i = 0; i < count; i++) {
        if (at + 2 > answer) {
            return TPM_NO_RESPONSE;
        }
        u32 alg = get(at, 2), n = digest_size(alg);
        at += 2;
        if (!n || at + n > answer) {
            return TPM_NO_RESPONSE;
        }
        u8 *to = alg == TPM_ALG_SHA256 ? sha256 : alg == TPM_ALG_SHA384 ? sha384 : 0;
        if (to) {
            for (u32 j = 0; j < n; j++) {
                to[j] = response[at + j];
            }
            found |= alg == TPM_ALG_SHA256 ? 1u : 2u;
        }
        at += n;
    }
    return found == 3u ? 0 : TPM_NO_RESPONSE;
}

/* TPM2_NV_DefineSpace under the platform hierarchy: an index with an empty authValue and no
 * policy, `size` bytes, its name computed with SHA-256. */
u32 tpm_nv_define_space(u32 index, u32 attributes, u32 size) {
    start(TPM_CC_NV_DEFINE_SPACE, TPM_RH_PLATFORM, 0);
    put(0, 2);  /* auth: empty */
    put(14, 2); /* TPM2B_NV_PUBLIC.size: the TPMS_NV_PUBLIC below */
    put(index, 4);
    put(TPM_ALG_SHA256, 2); /* nameAlg */
    put(attributes, 4);
    put(0, 2); /* authPolicy: empty */
    put(size, 2);
    return send();
}

u32 tpm_nv_write(u32 index, const u8 *data, u32 size, u32 offset) {
    if (size > NV_WRITE_MAX) {
        return TPM_NO_RESPONSE;
    }
    start(TPM_CC_NV_WRITE, TPM_RH_PLATFORM, index);
    put(size, 2);
    put_bytes(data, size);
    put(offset, 2);
    return send();
}

/* With TPMA_NV_WRITEDEFINE the lock holds until the index is undefined. */
u32 tpm_nv_write_lock(u32 index) {
    start(TPM_CC_NV_WRITE_LOCK, TPM_RH_PLATFORM, index);
    return send();
}

/* Disable the platform hierarchy (phEnable) until the next TPM2_Startup(CLEAR), as platform
 * firmware does before it hands over: its empty authorization would otherwise let anyone who
 * reaches the TPM undefine the log's index or change the platform's policy. Platform-created
 * indices stay readable (that is phEnableNV, left set). */
u32 tpm_platform_disable(void) {
    start(TPM_CC_HIERARCHY_CONTROL, TPM_RH_PLATFORM, 0);
    put(TPM_RH_PLATFORM, 4); /* enable: the hierarchy to change */
    put(0, 1);               /* state: NO */
    return send();
}
