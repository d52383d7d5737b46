/* Ending this L2: one OUT to QEMU's isa-debug-exit port, which L1 turns into the L2's exit code. */
#include "l2fw.h"

void l2_exit(u8 code) {
    outb(DEBUG_EXIT_PORT, code);
    for (;;) {
        __asm__ volatile("cli; hlt");
    }
}
