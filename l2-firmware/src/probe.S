/* probe_write(addr): write a byte back to where it was read from. Returns 0 when the store went
 * through, 1 when it faulted and the armed fault resumed at probe_write_faulted (idt.c). */
    .text
    .globl probe_write, probe_write_faulted
probe_write:
    movb (%rdi), %al
    movb %al, (%rdi)
    xorl %eax, %eax
    ret
probe_write_faulted:
    movl $1, %eax
    ret

/* The payload the firmware carries and measures (a blob in the image, outside its code). */
    .section .payload, "a"
    .ascii "tdpvtpm L2 payload: a measured blob the firmware extends into a PCR\n"
