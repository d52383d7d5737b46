/*
 * vTPM fast path for the swtpm data channel: accept one connection, read what the client sent,
 * and when that is exactly one well-framed TPM 2.0 command, run it through libtpms and send the
 * response, all in one call from Python (vtpm/fastpath.py).
 *
 * Why native: the tss2 swtpm TCTI opens a new TCP connection for every command, so a server
 * pays accept + read + process + write per command; done as separate Python calls that costs
 * about 10 us more than swtpm on this machine, enough to lose to it on small commands.
 *
 * Contract (the caller holds the engine's lock, so libtpms is called by one thread at a time):
 *   - resp, resp_len, resp_bufsize: the engine's libtpms response buffer, or all NULL when the
 *     TPM must not process (powered off): then the bytes are only read and handed back.
 *   - Nothing is parsed beyond the 10-byte header: bytes that are not exactly one complete
 *     command of 10..4096 bytes with tag 0x8001/0x8002 are handed back to Python as received,
 *     unprocessed, and the Python path answers them (an error, or mssim framing).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <libtpms/tpm_error.h>
#include <libtpms/tpm_library.h>

#define TPM_HEADER_SIZE 10
#define TPM_MAX_COMMAND_SIZE 4096
#define TPM_ST_NO_SESSIONS 0x8001
#define TPM_ST_SESSIONS 0x8002

enum fastpath_status {
    FASTPATH_ANSWERED = 0,      /* command run; `sent` of `response_len` bytes sent */
    FASTPATH_RECEIVED = 1,      /* `received` bytes in the buffer for Python to handle */
    FASTPATH_NOTHING_YET = 2,   /* connection accepted, no bytes yet */
    FASTPATH_CLOSED = 3,        /* the client closed or reset before sending anything */
    FASTPATH_TPM_FAILED = 4,    /* TPMLIB_Process failed: the caller sends TPM_RC_FAILURE */
    FASTPATH_ACCEPT_FAILED = 5, /* nothing accepted; `error` holds errno */
};

/* Filled in by vtpm_fastpath_accept; mirrored by FastpathResult in vtpm/fastpath.py. */
struct fastpath_result {
    int32_t status;
    int32_t received;
    int32_t sent;
    int32_t response_len;
    int32_t error;
};

static uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int whole_command(const unsigned char *buf, size_t n)
{
    if (n < TPM_HEADER_SIZE || n > TPM_MAX_COMMAND_SIZE)
        return 0;
    unsigned tag = ((unsigned)buf[0] << 8) | buf[1];
    return (tag == TPM_ST_NO_SESSIONS || tag == TPM_ST_SESSIONS) && be32(buf + 2) == n;
}

/* Returns the accepted descriptor (non-blocking, close-on-exec), or -1 if none was accepted. */
int vtpm_fastpath_accept(int listen_fd, unsigned char *buf, uint32_t buf_size,
                         unsigned char **resp, uint32_t *resp_len, uint32_t *resp_bufsize,
                         struct fastpath_result *result)
{
    result->status = FASTPATH_ACCEPT_FAILED;
    result->received = result->sent = result->response_len = result->error = 0;

    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        result->error = errno;
        return -1;
    }
    ssize_t n = recv(fd, buf, buf_size, 0);
    if (n < 0) {
        int again = errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        result->status = again ? FASTPATH_NOTHING_YET : FASTPATH_CLOSED;
        result->error = again ? 0 : errno;
        return fd;
    }
    if (n == 0) {
        result->status = FASTPATH_CLOSED;
        return fd;
    }
    result->received = (int32_t)n;
    if (resp == NULL || !whole_command(buf, (size_t)n)) {
        result->status = FASTPATH_RECEIVED;
        return fd;
    }
    TPM_RESULT rc = TPMLIB_Process(resp, resp_len, resp_bufsize, buf, (uint32_t)n);
    if (rc != TPM_SUCCESS || *resp_len < TPM_HEADER_SIZE) {
        result->status = FASTPATH_TPM_FAILED;
        return fd;
    }
    result->status = FASTPATH_ANSWERED;
    result->response_len = (int32_t)*resp_len;
    ssize_t sent = send(fd, *resp, *resp_len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0) {
        int again = errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        if (!again) {
            result->status = FASTPATH_CLOSED; /* answered, but the client is gone */
            result->error = errno;
        }
        sent = 0;
    }
    result->sent = (int32_t)sent;
    return fd;
}
