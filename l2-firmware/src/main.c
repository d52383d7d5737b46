/* L2 firmware entry: exceptions reported, the self-test run, the verdict as the exit code. */
#include "l2fw.h"

int l2_main(u64 vm, u64 probe_gpa);

int l2_main(u64 vm, u64 probe_gpa) {
    idt_install();
    console_puts("L2 firmware: started as L2 ");
    console_hex(vm);
    console_putc('\n');
    return selftest_run(probe_gpa) ? EXIT_SELFTEST_FAILED : EXIT_PASS;
}
