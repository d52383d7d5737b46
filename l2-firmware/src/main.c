/* L2 firmware entry: exceptions reported, the self-test run, the verdict as the exit code. */
#include "l2fw.h"

int l2_main(u64 vm, u64 probe_gpa, u64 mailbox_gpa, u64 flags);

int l2_main(u64 vm, u64 probe_gpa, u64 mailbox_gpa, u64 flags) {
    idt_install();
    console_puts("L2 firmware: started as L2 ");
    console_hex(vm);
    console_putc('\n');
    int failed = selftest_run(probe_gpa);
    if (!failed && flags & FLAG_SERVE_RELAY && mailbox_gpa) {
        relay_serve(mailbox_gpa);
    }
    return failed ? EXIT_SELFTEST_FAILED : EXIT_PASS;
}
