/* L2 firmware entry: exceptions reported, the self-test run, the verdict as the exit code. */
#include "l2fw.h"

int l2_main(void);

int l2_main(void) {
    idt_install();
    console_line("L2 firmware: ", "started");
    return selftest_run() ? EXIT_SELFTEST_FAILED : EXIT_PASS;
}
