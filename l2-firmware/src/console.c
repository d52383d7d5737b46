/* Console on COM1: each byte is one OUT to port 0x3F8, which L1 forwards to the host log. */
#include "l2fw.h"

void console_putc(char c) {
    outb(COM1_PORT, (u8)c);
}

void console_puts(const char *s) {
    while (*s) {
        console_putc(*s++);
    }
}

void console_hex(u64 value) {
    static const char digits[] = "0123456789abcdef";
    console_puts("0x");
    int shift = 60;
    while (shift > 0 && ((value >> shift) & 0xF) == 0) {
        shift -= 4;
    }
    for (; shift >= 0; shift -= 4) {
        console_putc(digits[(value >> shift) & 0xF]);
    }
}

void console_line(const char *label, const char *text) {
    console_puts(label);
    console_puts(text);
    console_putc('\n');
}
