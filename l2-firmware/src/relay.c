/* The in-guest TPM relay: wait in HLT for L1's relay interrupt, take the command from the mailbox
 * page (copied once), run it through the CRB, put the response in the mailbox and ring L1's
 * doorbell (tdxdefs/relay.py). A command the CRB cannot run is answered with state ERROR. */
#include "l2fw.h"

struct mailbox {
    volatile u32 state;
    volatile u32 length;
    volatile u32 sequence;
    u8 reserved[20];
    volatile u8 data[MAX_TPM_MESSAGE];
};

static u8 command[MAX_TPM_MESSAGE];
static u8 response[MAX_TPM_MESSAGE];

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
            for (u32 i = 0; i < length; i++) {
                command[i] = box->data[i];
            }
            answer = crb_transmit(command, length, response, MAX_TPM_MESSAGE);
        }
        for (u32 i = 0; i < answer; i++) {
            box->data[i] = response[i];
        }
        box->length = answer;
        box->state = answer ? RELAY_STATE_RESPONSE : RELAY_STATE_ERROR;
        outb(L2_DOORBELL_PORT, 1);
    }
}
