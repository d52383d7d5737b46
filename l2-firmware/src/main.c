/* L2 firmware entry: exceptions reported, the self-test run, then the measured boot of the payload;
 * the verdict as the exit code. Only a firmware whose checks and measured boot held serves the
 * relay. */
#include "l2fw.h"

int l2_main(u64 vm, u64 probe_gpa, u64 mailbox_gpa, u64 flags);

int l2_main(u64 vm, u64 probe_gpa, u64 mailbox_gpa, u64 flags) {
    idt_install();
    console_puts("L2 firmware: started as L2 ");
    console_hex(vm);
    console_putc('\n');
    if (selftest_run(probe_gpa)) {
        return EXIT_SELFTEST_FAILED;
    }
    if (measured_boot() < 0) {
        return EXIT_MEASURED_BOOT_FAILED;
    }
    if (flags & FLAG_SERVE_RELAY && mailbox_gpa) {
        relay_serve(mailbox_gpa);
    }
    return EXIT_PASS;
}
