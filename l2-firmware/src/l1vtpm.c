/* L1VTPM Detect (tdxdefs/l1vtpm.py): ask L1, with TDG.VP.VMCALL<Service> and the L1VTPM GUID,
 * whether this L2 has a vTPM, and count the TCG_PCR_EVENT2 records of L1's measurements it sends
 * back in GUIDed HOBs. Every length in the response is checked against the page. The measured boot
 * then copies those records once into its event log and checks each on the copy. */
#include "l2fw.h"

#define PAGE 4096u
#define SERVICE_HEADER 24u     /* GUID, length, status */
#define MESSAGE 4u             /* version, command, status, reserved */
#define HOB_GUID_EXTENSION 0x0004u
#define HOB_END 0xFFFFu
#define HOB_HEADER 8u
#define HOB_GUID_HEADER 24u
#define TDVMCALL_SERVICE 0x10005ul

/* 766cf580-8dc3-4cea-a94e-e5424da1da56 and d26c221e-2430-4c8a-9170-3fcb4500413f, as stored */
static const u8 l1vtpm_guid[16] = {0x80, 0xf5, 0x6c, 0x76, 0xc3, 0x8d, 0xea, 0x4c,
                                   0xa9, 0x4e, 0xe5, 0x42, 0x4d, 0xa1, 0xda, 0x56};
static const u8 event2_hob_guid[16] = {0x1e, 0x22, 0x6c, 0xd2, 0x30, 0x24, 0x8a, 0x4c,
                                       0x91, 0x70, 0x3f, 0xcb, 0x45, 0x00, 0x41, 0x3f};

static u8 command[PAGE] __attribute__((aligned(4096)));
static u8 response[PAGE] __attribute__((aligned(4096)));
static u32 answered; /* the response's length after a Detect that found the service, else 0 */

static u32 le32(const u8 *p) {
    return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static u32 le16(const u8 *p) {
    return (u32)p[0] | (u32)p[1] << 8;
}

static int same(const u8 *a, const u8 *b, u32 n) {
    for (u32 i = 0; i < n; i++) {
        if (a[i] != b[i]) {
            return 0;
        }
    }
    return 1;
}

/* Calls `record(hob, size, context)` for each TCG_PCR_EVENT2 HOB of the response (its record at
 * hob + HOB_GUID_HEADER, `size` bytes); 1 at the end-of-HOB-list, 0 when a length is wrong. */
static int each_event(u32 total, void (*record)(const u8 *, u32, void *), void *context) {
    for (u32 at = SERVICE_HEADER + MESSAGE; at + HOB_HEADER <= total;) {
        u32 type = le16(response + at), size = le16(response + at + 2);
        if (type == HOB_END) {
            return 1;
        }
        if (size < HOB_HEADER || at + size > total) {
            return 0;
        }
        if (type == HOB_GUID_EXTENSION && size >= HOB_GUID_HEADER &&
            same(response + at + HOB_HEADER, event2_hob_guid, 16)) {
            record(response + at + HOB_GUID_HEADER, size - HOB_GUID_HEADER, context);
        }
        at += size;
    }
    return 0;
}

static void count_event(const u8 *record, u32 size, void *context) {
    (void)record;
    (void)size;
    ++*(u32 *)context;
}

int l1vtpm_detect(u32 *events) {
    answered = 0;
    for (u32 i = 0; i < 16; i++) {
        command[i] = l1vtpm_guid[i];
    }
    u32 length = SERVICE_HEADER + MESSAGE;
    command[16] = (u8)length;
    command[24] = 0; /* version */
    command[25] = 1; /* Detect */
    register u64 r10 __asm__("r10") = 0;
    register u64 r11 __asm__("r11") = TDVMCALL_SERVICE;
    register u64 r12 __asm__("r12") = (u64)command;
    register u64 r13 __asm__("r13") = (u64)response;
    register u64 r14 __asm__("r14") = 0;
    register u64 r15 __asm__("r15") = 0;
    u64 rax = 0;
    __asm__ volatile(".byte 0x66, 0x0f, 0x01, 0xcc"
                     : "+a"(rax), "+r"(r10), "+r"(r11), "+r"(r12), "+r"(r13), "+r"(r14), "+r"(r15)
                     :
                     : "rcx", "rdx", "memory");
    if (rax != 0 || r10 != 0) {
        return -1; /* no L1VTPM service */
    }
    u32 total = le32(response + 16);
    if (!same(response, l1vtpm_guid, 16) || le32(response + 20) != 0 || total > PAGE ||
        total < SERVICE_HEADER + MESSAGE || response[SERVICE_HEADER + 2] != 0) {
        return 0;
    }
    u32 count = 0;
    if (!each_event(total, count_event, &count)) {
        return 0;
    }
    answered = total;
    *events = count;
    return 1;
}

struct copy {
    u8 *out;
    u32 capacity, length;
    int bad;
};

static void copy_event(const u8 *record, u32 size, void *context) {
    struct copy *c = context;
    if (c->length + size > c->capacity) {
        c->length += size; /* too long: only the total is wanted, for the message */
        c->bad |= 2;
        return;
    }
    u8 *to = c->out + c->length;
    for (u32 i = 0; i < size; i++) {
        to[i] = record[i];
    }
    if (eventlog_event2_size(to, size) != size) {
        c->bad |= 1; /* checked on the copy: a record that is not exactly its HOB's contents */
    }
    c->length += size;
}

int l1vtpm_events(u8 *out, u32 capacity, u32 *length) {
    if (!answered) {
        return -1;
    }
    struct copy c = {out, capacity, 0, 0};
    int ended = each_event(answered, copy_event, &c);
    *length = c.length;
    return ended && !c.bad;
}
