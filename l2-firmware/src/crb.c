/* A TPM CRB driver (TCG PC Client Platform TPM Profile, CRB interface, locality 0): request the
 * locality and go Ready once, learn where the command buffer is, then per command: copy it into
 * the buffer, START, wait for START to clear, copy the response out. After a command the CRB stays
 * Ready, so a command costs four register accesses (each an exit to L1): the status first, since a
 * TPM power cycle sends the CRB back to Idle, then START, the START poll and the status. Waits are
 * bounded; a fatal TPM status or a response that does not fit ends the command with length 0 and
 * the next command starts over from the locality request. */
#include "l2fw.h"

#define START_POLLS 100000
#define TPM_HEADER 10u

static volatile u8 *buffer;
static u32 buffer_size;

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

u32 crb_transmit(const volatile u8 *command, u32 length, volatile u8 *response, u32 capacity) {
    if (!crb_ready()) {
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
    if (start || reg(CRB_CTRL_STS) & CRB_STS_FATAL) {
        return failed();
    }
    u32 answer = big_endian32(buffer + 2);
    if (answer < TPM_HEADER || answer > capacity || answer > buffer_size) {
        return 0;
    }
    for (u32 i = 0; i < answer; i++) {
        response[i] = buffer[i];
    }
    return answer;
}
