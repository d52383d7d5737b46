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

/* probe_read(addr): 0 when the load went through, 1 when it faulted (probe_read_faulted). */
    .globl probe_read, probe_read_faulted
probe_read:
    movb (%rdi), %al
    xorl %eax, %eax
    ret
probe_read_faulted:
    movl $1, %eax
    ret

