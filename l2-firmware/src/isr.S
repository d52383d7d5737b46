/* Exception and interrupt entry stubs, 16 bytes apart, so idt.c computes each handler's address
 * from the table's base (no absolute relocations in a position-independent flat image). */
    .text
    .globl isr_table
    .balign 16
isr_table:
    .irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if \v == 8 || \v == 10 || \v == 11 || \v == 12 || \v == 13 || \v == 14 || \v == 17 || \v == 21 || \v == 29 || \v == 30
    pushq $\v
    .else
    pushq $0
    pushq $\v
    .endif
    jmp isr_common
    .endr
    .balign 16
    /* stub 32: the self-test interrupt vector (idt.c installs it at SELFTEST_VECTOR) */
    pushq $0
    pushq $0x40
    jmp isr_common
    .balign 16
    /* stub 33: the relay vector (idt.c installs it at RELAY_VECTOR) */
    pushq $0
    pushq $0x52
    jmp isr_common

isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    call isr_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
