/* Interrupt descriptor table: every exception is reported on the console; the self-test can arm
 * one expected fault and resume after it (Intel SDM Vol. 3, 6.14: 64-bit IDT gate descriptors). */
#include "l2fw.h"

#define IDT_ENTRIES 256
#define ISR_STUB_SIZE 16
#define EXCEPTION_STUBS 32
#define GATE_INTERRUPT_PRESENT 0x8E00u

struct idt_gate {
    u16 offset_low;
    u16 selector;
    u16 flags;
    u16 offset_mid;
    u32 offset_high;
    u32 reserved;
} __attribute__((packed));

struct idt_pointer {
    u16 limit;
    u64 base;
} __attribute__((packed));

extern char isr_table[];
void isr_dispatch(struct trap_frame *frame);

static struct idt_gate idt[IDT_ENTRIES];
static volatile u32 armed_vector = 0xFFFFFFFFu;
static void *volatile armed_resume;
static volatile int armed_taken;
volatile u32 selftest_interrupts;
volatile u32 relay_interrupts;

static void set_gate(u32 vector, u64 handler, u16 selector) {
    idt[vector].offset_low = (u16)handler;
    idt[vector].selector = selector;
    idt[vector].flags = GATE_INTERRUPT_PRESENT;
    idt[vector].offset_mid = (u16)(handler >> 16);
    idt[vector].offset_high = (u32)(handler >> 32);
    idt[vector].reserved = 0;
}

void idt_install(void) {
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    u64 base = (u64)isr_table;
    for (u32 v = 0; v < EXCEPTION_STUBS; v++) {
        set_gate(v, base + v * ISR_STUB_SIZE, cs);
    }
    set_gate(SELFTEST_VECTOR, base + EXCEPTION_STUBS * ISR_STUB_SIZE, cs);
    set_gate(RELAY_VECTOR, base + (EXCEPTION_STUBS + 1) * ISR_STUB_SIZE, cs);
    struct idt_pointer pointer = {sizeof(idt) - 1, (u64)idt};
    __asm__ volatile("lidt %0" : : "m"(pointer));
}

void arm_fault(u32 vector, void *resume) {
    armed_taken = 0;
    armed_resume = resume;
    armed_vector = vector;
}

int fault_taken(void) {
    return armed_taken;
}

void isr_dispatch(struct trap_frame *frame) {
    if (frame->vector == SELFTEST_VECTOR) {
        selftest_interrupts++;
        wrmsr(X2APIC_EOI, 0);
        return;
    }
    if (frame->vector == RELAY_VECTOR) {
        relay_interrupts++;
        wrmsr(X2APIC_EOI, 0);
        return;
    }
    if (frame->vector == armed_vector) {
        armed_vector = 0xFFFFFFFFu;
        armed_taken = 1;
        frame->rip = (u64)armed_resume;
        return;
    }
    console_puts("L2 firmware: unexpected exception vector ");
    console_hex(frame->vector);
    console_puts(" error ");
    console_hex(frame->error);
    console_puts(" rip ");
    console_hex(frame->rip);
    console_putc('\n');
    l2_exit(EXIT_UNEXPECTED_EXCEPTION);
}
