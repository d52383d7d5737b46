/* A TPM CRB driver (TCG PC Client Platform TPM Profile, CRB interface, locality 0): request the
 * locality and go Ready once, learn where the command buffer is, then per command: copy it into
 * the buffer, START, wait for START to clear, check the status, copy the response out. After a
 * command the CRB stays Ready, but L1 may change it between commands (a vTPM power cycle sends it
 * back to Idle, a failed vTPM makes it fatal), so before START the driver reads the status, unless
 * the caller passes L1's CRB epoch (the relay mailbox's count of such changes) and it is the one
 * of the last command that left the CRB Ready: then nothing has changed and a relayed command
 * costs three register accesses (each an exit to L1): START, the START poll and the status. The
 * status after START must be neither fatal nor Idle (a START the CRB ignored); waits are bounded;
 * a failed command or a response that does not fit ends with length 0, and after a failure the
 * next command starts over from the locality request. */
#include "l2fw.h"

#define START_POLLS 100000
#define TPM_HEADER 10u

static volatile u8 *buffer;
static u32 buffer_size;
static int ready_known; /* the last command left the CRB Ready ... */
static u32 ready_epoch; /* ... at this CRB epoch of L1's */

static u32 reg(u32 offset) {
    return mmio_read32(TPM_CRB_BASE + offset);
}

static void set_reg(u32 offset, u32 value) {
    mmio_write32(TPM_CRB_BASE + offset, value);
}

int crb_ready(void) {
    if (buffer && !(reg(CRB_CTRL_STS) & (CRB_STS_IDLE | CRB_STS_FATAL))) {
        return 1; /* still Ready from the last command */
    }
    if (!(reg(CRB_LOC_STATE) & CRB_LOC_ASSIGNED)) {
        set_reg(CRB_LOC_CTRL, CRB_LOC_REQUEST_ACCESS);
    }
    if (reg(CRB_CTRL_STS) & CRB_STS_FATAL) {
        return 0;
    }
    set_reg(CRB_CTRL_REQ, CRB_REQ_CMD_READY);
    if (reg(CRB_CTRL_STS) & CRB_STS_FATAL) {
        return 0;
    }
    buffer_size = reg(CRB_CTRL_CMD_SIZE);
    buffer = (volatile u8 *)((u64)reg(CRB_CTRL_CMD_HADDR) << 32 | reg(CRB_CTRL_CMD_LADDR));
    return 1;
}

static u32 big_endian32(const volatile u8 *p) {
    return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3];
}

static u32 failed(void) {
    buffer = 0; /* start over with the locality request next time */
    return 0;
}

static u32 transmit(const volatile u8 *command, u32 length, volatile u8 *response, u32 capacity,
                    int known, u32 epoch) {
    int unchanged = known && ready_known && epoch == ready_epoch && buffer;
    ready_known = 0;
    if (!unchanged && !crb_ready()) {
        return failed();
    }
    if (length < TPM_HEADER || length > buffer_size) {
        return 0;
    }
    for (u32 i = 0; i < length; i++) {
        buffer[i] = command[i];
    }
    set_reg(CRB_CTRL_START, 1);
    u32 start = 1;
    for (int i = 0; i < START_POLLS && (start = reg(CRB_CTRL_START)); i++) {
        __asm__ volatile("pause");
    }
    if (start || reg(CRB_CTRL_STS) & (CRB_STS_FATAL | CRB_STS_IDLE)) {
        return failed();
    }
    ready_known = known;
    ready_epoch = epoch;
    u32 answer = big_endian32(buffer + 2);
    if (answer < TPM_HEADER || answer > capacity || answer > buffer_size) {
        return 0;
    }
    for (u32 i = 0; i < answer; i++) {
        response[i] = buffer[i];
    }
    return answer;
}

u32 crb_transmit(const volatile u8 *command, u32 length, volatile u8 *response, u32 capacity) {
    return transmit(command, length, response, capacity, 0, 0);
}

u32 crb_transmit_at(const volatile u8 *command, u32 length, volatile u8 *response, u32 capacity,
                    u32 epoch) {
    return transmit(command, length, response, capacity, 1, epoch);
}
