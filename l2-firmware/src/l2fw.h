/* The L2 firmware's own definitions: port and MSR access, console, exception hooks.
 *
 * Freestanding (no libc). Everything here follows the L2 contract in ../README.md.
 */
#ifndef L2FW_H
#define L2FW_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define COM1_PORT 0x3F8u      /* console: every byte written appears in the host log */
#define DEBUG_EXIT_PORT 0xF4u /* QEMU isa-debug-exit: a byte V ends this L2 with code V */

#define X2APIC_EOI 0x80Bu      /* x2APIC EOI register (Intel SDM Vol. 3, 11.12.1.2) */
#define X2APIC_SELF_IPI 0x83Fu /* x2APIC SELF IPI register */

#define TPM_CRB_BASE 0xFED40000ul /* TCG PC Client Platform TPM Profile, CRB, locality 0 */
#define TPM_CRB_INTF_ID 0x30u     /* TPM_CRB_INTF_ID_0: InterfaceType in bits 3:0 */

#define SELFTEST_VECTOR 0x40u /* the fixed interrupt the self-test asks L1 to inject */

/* The relay path (tdxdefs/relay.py; a test checks these values against it). */
#define RELAY_VECTOR 0x52u        /* L1 -> L2: a command is in the mailbox */
#define L2_DOORBELL_PORT 0xF5u    /* L2 -> L1: the response is in the mailbox */
#define MAILBOX_HEADER_SIZE 32u   /* state, length, sequence, crb_epoch, reserved[16] */
#define MAX_TPM_MESSAGE 4064u     /* 4096 - 32 */
#define RELAY_STATE_COMMAND 1u
#define RELAY_STATE_RESPONSE 2u
#define RELAY_STATE_ERROR 3u
#define FLAG_SERVE_RELAY 1u       /* RCX bit 0 at entry */

/* The TPM CRB registers the driver uses (TCG PC Client Platform TPM Profile, CRB interface). */
#define CRB_LOC_CTRL 0x08u
#define CRB_LOC_STATE 0x00u
#define CRB_CTRL_REQ 0x40u
#define CRB_CTRL_STS 0x44u
#define CRB_CTRL_START 0x4Cu
#define CRB_CTRL_CMD_SIZE 0x58u
#define CRB_CTRL_CMD_LADDR 0x5Cu
#define CRB_CTRL_CMD_HADDR 0x60u
#define CRB_CTRL_RSP_SIZE 0x64u
#define CRB_CTRL_RSP_ADDR 0x68u
#define CRB_STS_FATAL 1u
#define CRB_STS_IDLE 2u
#define CRB_REQ_CMD_READY 1u
#define CRB_LOC_REQUEST_ACCESS 1u
#define CRB_LOC_ASSIGNED 2u

/* Measured boot (tdxdefs/firmware_log.py; a test checks these values against it). */
#define PAYLOAD_PCR 4u
#define PAYLOAD_EVENT_TYPE 0x0000000Du  /* EV_IPL: the code the firmware hands on to, in PCR 4 */
#define PAYLOAD_MAX 1024u               /* TPM2B_EVENT of TPM2_PCR_Event (also in link.ld) */
#define EVENT_LOG_NV_INDEX 0x01400100u
#define EVENT_LOG_NV_ATTRIBUTES 0x42072001u /* PLATFORMCREATE|NO_DA|AUTHREAD|OWNERREAD|PPREAD|
                                             * WRITEDEFINE|PPWRITE */
#define EVENT_LOG_MAX 2048u             /* TPM_PT_NV_INDEX_MAX of libtpms */
#define NV_WRITE_MAX 1024u              /* TPM_PT_NV_BUFFER_MAX of libtpms */
#define SHA256_SIZE 32u
#define SHA384_SIZE 48u

/* Exit codes (the byte written to DEBUG_EXIT_PORT). */
#define EXIT_PASS 0u
#define EXIT_SELFTEST_FAILED 1u
#define EXIT_MEASURED_BOOT_FAILED 2u
#define EXIT_UNEXPECTED_EXCEPTION 3u

static inline void outb(u16 port, u8 value) {
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline void cpuid(u32 leaf, u32 subleaf, u32 *a, u32 *b, u32 *c, u32 *d) {
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(subleaf));
}

static inline void wrmsr(u32 msr, u64 value) {
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)value), "d"((u32)(value >> 32)));
}

static inline u32 mmio_read32(u64 address) {
    return *(volatile u32 *)address;
}

static inline void mmio_write32(u64 address, u32 value) {
    *(volatile u32 *)address = value;
}

/* console.c */
void console_putc(char c);
void console_puts(const char *s);
void console_hex(u64 value);
void console_line(const char *label, const char *text);

/* exit.c */
__attribute__((noreturn)) void l2_exit(u8 code);

/* idt.c: install the IDT; arm_fault makes the next exception with `vector` resume at `resume`. */
struct trap_frame {
    u64 r15, r14, r13, r12, r11, r10, r9, r8, rbp, rdi, rsi, rdx, rcx, rbx, rax;
    u64 vector, error, rip, cs, rflags, rsp, ss;
};
void idt_install(void);
void arm_fault(u32 vector, void *resume);
int fault_taken(void);
extern volatile u32 selftest_interrupts;
extern volatile u32 relay_interrupts;

/* crb.c: TPM commands through the CRB; returns the response length, or 0 when the TPM failed.
 * crb_transmit_at takes L1's CRB epoch (the relay mailbox's crb_epoch): while it is unchanged the
 * CRB is still Ready and the status read before START is left out. */
int crb_ready(void);
u32 crb_transmit(const volatile u8 *command, u32 length, volatile u8 *response, u32 capacity);
u32 crb_transmit_at(const volatile u8 *command, u32 length, volatile u8 *response, u32 capacity,
                    u32 epoch);

/* l1vtpm.c: 1 and the number of L1's events when L1 has a vTPM for us, -1 with no service,
 * 0 for a malformed answer. l1vtpm_events copies the TCG_PCR_EVENT2 records of that answer back to
 * back into `out` when their total (*length) fits `capacity`; 1 when copied and each record checks,
 * -1 when Detect found no service, 0 for a malformed record or one that does not fit. */
int l1vtpm_detect(u32 *events);
int l1vtpm_events(u8 *out, u32 capacity, u32 *length);

/* eventlog.c: the records of a crypto-agile TCG event log with SHA-256 and SHA-384 digests. */
#define SPEC_ID_EVENT_SIZE 69u /* TCG_PCClientPCREvent with TCG_EfiSpecIDEvent, two algorithms */
#define EVENT2_FIXED_SIZE 100u /* TCG_PCR_EVENT2 without its event data, two digests */
u32 eventlog_spec_id(u8 *out);
u32 eventlog_event2(u8 *out, u32 pcr, u32 type, const u8 *sha256, const u8 *sha384,
                    const u8 *data, u32 size);
u32 eventlog_event2_size(const u8 *record, u32 available);

/* tpm.c: TPM 2.0 commands with an empty password session; each returns the TPM's response code,
 * or TPM_NO_RESPONSE when the CRB gave no well-formed answer. */
#define TPM_NO_RESPONSE 0xFFFFFFFFu
u32 tpm_pcr_event(u32 pcr, const u8 *data, u32 size, u8 *sha256, u8 *sha384);
u32 tpm_nv_define_space(u32 index, u32 attributes, u32 size);
u32 tpm_nv_write(u32 index, const u8 *data, u32 size, u32 offset);
u32 tpm_nv_write_lock(u32 index);
u32 tpm_platform_disable(void);

/* measure.c: 1 when measured and logged, 0 when skipped (no L1VTPM service), -1 on failure. */
int measured_boot(void);

/* relay.c: serve the relay mailbox forever. */
__attribute__((noreturn)) void relay_serve(u64 mailbox_gpa);

/* selftest.c */
int selftest_run(u64 probe_gpa);

#endif
