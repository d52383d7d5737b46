/* Image header and entry point. The L2 contract enters the image at its first byte in 64-bit mode
 * with interrupts disabled and RSP at the top of the L2's RAM, so the first bytes jump over the
 * header that tells L1 the image's layout (text, data, bss: see ../README.md). */
    .section .head, "ax"
    .globl _start_image
_start_image:
    jmp 1f
    .balign 8
    .ascii "TDPL2FW1"                 /* magic */
    .long 64                          /* header size */
    .long 1                           /* header version */
    .long __text_end - _start_image   /* end of code and read-only data (R+X) */
    .long __data_end - _start_image   /* end of initialized data (R+W) */
    .long __bss_end - _start_image    /* end of zeroed data (R+W) */
    .long __payload_start - _start_image  /* the measured payload blob */
    .long __payload_end - _start_image
    .balign 64, 0
1:
    cld
    movq %rdi, %r12                   /* L1's entry registers: RDI = this L2's number, */
    movq %rsi, %r13                   /* RSI = a GPA outside its memory for the self-test, */
    movq %rdx, %r14                   /* RDX = its relay mailbox page, */
    movq %rcx, %r15                   /* RCX = flags (bit 0: serve the relay after the test) */
    andq $-16, %rsp
    /* zero .bss: L1 loads only the file's bytes */
    leaq __data_end(%rip), %rdi
    leaq __bss_end(%rip), %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb
    movq %r12, %rdi
    movq %r13, %rsi
    movq %r14, %rdx
    movq %r15, %rcx
    call l2_main
    movl %eax, %edi
    call l2_exit
