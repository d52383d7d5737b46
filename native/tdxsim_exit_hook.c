/* tdxsim's L2 exit hook: a unicorn code hook, in C, that stops L2 before each instruction that may
 * exit to L1 and bounds the instructions one run may start (tdxsim/l2/exit_hook.py).
 *
 * Unicorn's own exit addresses (UC_CTL_UC_EXITS) are compiled into the translated code, so at the
 * end of every uc_emu_start unicorn drops each translation next to an exit, and L2's hot code was
 * translated again after every L2 exit. Here the addresses are checked when each instruction
 * starts, on the per-instruction hook that an instruction count needs anyway: translations live
 * across runs, and a change of the exit set needs no translation dropped. */
#include <stddef.h>
#include <stdint.h>

typedef int (*emu_stop_fn)(void *uc);

/* enum StopReason in tdxsim/l2/exit_hook.py */
enum stop_reason { STOP_NONE = 0, STOP_EXIT = 1, STOP_BUDGET = 2 };

#define NO_ADDRESS UINT64_MAX
/* The filter has one bit per value of an address's low FILTER_BITS bits: set where an exit has
 * them. Most instructions are not exits and their bit is clear, so the search is skipped. */
#define FILTER_BITS 16
#define FILTER_MASK ((UINT64_C(1) << FILTER_BITS) - 1)

/* struct ExitHookState in tdxsim/l2/exit_hook.py */
struct exit_hook {
    emu_stop_fn emu_stop;   /* unicorn's uc_emu_stop */
    const uint64_t *exits;  /* exit addresses, ascending */
    uint64_t exit_count;
    const uint8_t *filter;  /* (1 << FILTER_BITS) bits, see FILTER_BITS; NULL: search always */
    uint64_t budget;        /* instructions this run may start */
    uint64_t started;       /* instructions started in this run */
    uint64_t pass_once;     /* an address whose next start does not stop; NO_ADDRESS for none */
    uint64_t stopped_at;    /* where the hook stopped unicorn */
    int32_t reason;         /* enum stop_reason */
    int32_t exits_enabled;  /* 0: only the budget stops */
};

/* The layout Python checks at load (ExitHookState), so that a library built from an older source
 * is refused instead of reading its fields at the wrong offsets. */
const uint64_t tdxsim_exit_hook_layout[2] = {sizeof(struct exit_hook),
                                             offsetof(struct exit_hook, reason)};

static int is_exit(const struct exit_hook *hook, uint64_t address) {
    if (hook->filter != NULL) {
        uint64_t bit = address & FILTER_MASK;
        if (!((hook->filter[bit >> 3] >> (bit & 7)) & 1)) {
            return 0;
        }
    }
    size_t low = 0;
    size_t high = (size_t)hook->exit_count;
    while (low < high) {
        size_t middle = low + (high - low) / 2;
        uint64_t value = hook->exits[middle];
        if (value == address) {
            return 1;
        }
        if (value < address) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    return 0;
}

static void stop(void *uc, struct exit_hook *hook, uint64_t address, enum stop_reason reason) {
    hook->reason = reason;
    hook->stopped_at = address;
    hook->emu_stop(uc); /* before this instruction runs */
}

/* UC_HOOK_CODE callback: runs before every instruction. */
void tdxsim_exit_hook(void *uc, uint64_t address, uint32_t size, void *user_data) {
    struct exit_hook *hook = user_data;
    (void)size;
    if (hook->reason != STOP_NONE) {
        return; /* already stopping */
    }
    if (hook->started >= hook->budget) {
        stop(uc, hook, address, STOP_BUDGET);
        return;
    }
    if (address == hook->pass_once) {
        hook->pass_once = NO_ADDRESS;
    } else if (hook->exits_enabled && is_exit(hook, address)) {
        stop(uc, hook, address, STOP_EXIT);
        return;
    }
    hook->started++;
}
