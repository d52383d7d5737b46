/* The firmware's self-test: one check per L2 exit type L1 must handle, each line on the console
 * ("selftest: NAME ok" or "selftest: NAME FAIL (detail)"), the verdict as the exit code. */
#include "l2fw.h"

#define GP_VECTOR 13u
#define HLT_WAITS 64
#define CRB_INTERFACE_TYPE_MASK 0xFu
#define CRB_INTERFACE_TYPE_CRB 1u

extern char _start_image[];
extern char probe_write_faulted[];
int probe_write(volatile u8 *address);
int probe_read(volatile u8 *address);
extern char probe_read_faulted[];

static int failures;

static void report(const char *name, int ok, const char *detail, u64 value) {
    console_puts("selftest: ");
    console_puts(name);
    if (ok) {
        console_puts(" ok\n");
        return;
    }
    failures++;
    console_puts(" FAIL (");
    console_puts(detail);
    console_hex(value);
    console_puts(")\n");
}

/* CPUID 0x21: L1's TD-partitioning convention, subleaf 0 "IntelTDX    ", subleaf 1 EBX = 1. */
static void check_cpuid(void) {
    u32 a, b, c, d;
    cpuid(0x21, 0, &a, &b, &c, &d);
    int vendor = b == 0x65746E49u && d == 0x5844546Cu && c == 0x20202020u; /* "Inte" "lTDX" "    " */
    report("cpuid-tdx-vendor", vendor, "ebx=", b);
    cpuid(0x21, 1, &a, &b, &c, &d);
    report("cpuid-tdp-guest", b == 1, "ebx=", b);
}

/* A self-IPI through the x2APIC: L1 injects the vector, the handler counts it and EOIs. */
static void check_interrupt(void) {
    selftest_interrupts = 0;
    wrmsr(X2APIC_SELF_IPI, SELFTEST_VECTOR);
    for (int i = 0; i < HLT_WAITS && selftest_interrupts == 0; i++) {
        __asm__ volatile("sti; hlt; cli" ::: "memory");
    }
    report("interrupt", selftest_interrupts == 1, "delivered=", selftest_interrupts);
}

/* A store to the firmware's own code page: L1 refuses it (the alias is R+X) and injects #GP(0). */
static void check_code_is_read_only(void) {
    arm_fault(GP_VECTOR, probe_write_faulted);
    int faulted = probe_write((volatile u8 *)_start_image);
    report("code-read-only", faulted && fault_taken(), "faulted=", (u64)faulted);
    arm_fault(0xFFFFFFFFu, 0);
}

/* An MMIO read of a device register: the TPM CRB interface ID says "CRB". */
static void check_mmio(void) {
    u32 id = mmio_read32(TPM_CRB_BASE + TPM_CRB_INTF_ID);
    report("mmio-crb-interface", (id & CRB_INTERFACE_TYPE_MASK) == CRB_INTERFACE_TYPE_CRB,
           "intf_id=", id);
}

/* A read of memory that is not this L2's (another L2's RAM, when L1 names one): #GP(0). */
static void check_isolation(u64 probe_gpa) {
    if (probe_gpa == 0) {
        return;
    }
    arm_fault(GP_VECTOR, probe_read_faulted);
    int faulted = probe_read((volatile u8 *)probe_gpa);
    report("isolation", faulted && fault_taken(), "faulted=", (u64)faulted);
    arm_fault(0xFFFFFFFFu, 0);
}

/* TPM2_GetRandom(8) through the CRB: the vTPM behind it answers with 8 bytes. */
static void check_tpm(void) {
    static const u8 get_random[] = {0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x7b, 0, 8};
    static u8 answer[64];
    if (mmio_read32(TPM_CRB_BASE + CRB_CTRL_STS) & CRB_STS_FATAL) {
        console_line("selftest: tpm-getrandom ", "skipped (no vTPM behind the CRB)");
        return;
    }
    u32 length = crb_transmit(get_random, sizeof(get_random), answer, sizeof(answer));
    u32 rc = length >= 10 ? (u32)answer[6] << 24 | (u32)answer[7] << 16 | (u32)answer[8] << 8 | answer[9] : 0xFFFFFFFFu;
    report("tpm-getrandom", length == 20 && rc == 0, "length=", length);
}

/* L1VTPM Detect: L1 says this L2 has a vTPM and sends its measurement events (at least two:
 * its version and this firmware image). */
static void check_l1vtpm(void) {
    u32 events = 0;
    int found = l1vtpm_detect(&events);
    if (found < 0) {
        console_line("selftest: l1vtpm-detect ", "skipped (no L1VTPM service)");
        return;
    }
    report("l1vtpm-detect", found == 1 && events >= 2, "events=", events);
}

int selftest_run(u64 probe_gpa) {
    failures = 0;
    check_cpuid();
    check_interrupt();
    check_code_is_read_only();
    check_mmio();
    check_tpm();
    check_l1vtpm();
    check_isolation(probe_gpa);
    console_line("selftest: ", failures ? "FAIL" : "pass");
    return failures;
}
