/* The in-guest TPM relay: wait in HLT for L1's relay interrupt, copy the command from the mailbox
 * page once, straight into the CRB command buffer, run it, copy the response from the CRB buffer
 * straight into the mailbox, set its state and halt again: L1 takes a halt with the mailbox
 * answered as the doorbell (tdxdefs/relay.py), so the answer costs no exit of its own. No copy in
 * between: each byte crosses once each way. A command the CRB cannot run is answered with state
 * ERROR. */
#include "l2fw.h"

struct mailbox {
    volatile u32 state;
    volatile u32 length;
    volatile u32 sequence;
    volatile u32 crb_epoch; /* L1's count of CRB changes the L2 did not make (crb.c) */
    u8 reserved[16];
    volatile u8 data[MAX_TPM_MESSAGE];
};

void relay_serve(u64 mailbox_gpa) {
    struct mailbox *box = (struct mailbox *)mailbox_gpa;
    console_line("L2 firmware: ", "serving the TPM relay");
    for (;;) {
        if (box->state != RELAY_STATE_COMMAND) {
            __asm__ volatile("sti; hlt; cli" ::: "memory"); /* the relay vector wakes us */
            continue;
        }
        u32 length = box->length;
        u32 answer = 0;
        if (length <= MAX_TPM_MESSAGE) {
            /* the command is read before the response is written (crb_transmit) */
            answer = crb_transmit_at(box->data, length, box->data, MAX_TPM_MESSAGE,
                                     box->crb_epoch);
        }
        box->length = answer;
        box->state = answer ? RELAY_STATE_RESPONSE : RELAY_STATE_ERROR; /* read at the next HLT */
    }
}
