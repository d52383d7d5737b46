"""Entry point of the minimal L1: VP.INFO, ACCEPT, RTMR.EXTEND, MR.REPORT, GetQuote, a UART line.

It uses nothing but the platform it is given (register-level `tdcall`, TD memory) and the standard
library, and returns a JSON summary (the quote in hex) that the host prints as the run's output.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import struct
import sys
import time
from typing import Any

MARKER = "l1-min-A"  # tests flip one byte of this to show that the changed image is what runs
LEAF_VMCALL, LEAF_VP_INFO, LEAF_RTMR_EXTEND, LEAF_MR_REPORT, LEAF_ACCEPT = 0, 1, 2, 4, 6
LEAF_VP_ENTER = 25
GHCI_HLT, GHCI_IO, GHCI_MAP_GPA, GHCI_GET_QUOTE = 0x0C, 0x1E, 0x10001, 0x10002
GHCI_REPORT_FATAL_ERROR, GHCI_SETUP_NOTIFY = 0x10003, 0x10004
NOTIFY_VECTOR = 0x40
EXPOSE_R10_R15 = 0xFC00
PAGE = 4096
WORK = 0x200000  # a 2M block L1 accepts for its own data
REPORT, REPORTDATA, DIGEST = WORK, WORK + 0x1000, WORK + 0x2000
QUOTE_BUF, QUOTE_BUF_SIZE = 0x400000, 2 * PAGE
LEVEL_2M = 1
UART = 0x3F8
RAX, RCX, RDX, R8, R9, R10, R11, R12, R13, R14, R15 = 0, 1, 2, 8, 9, 10, 11, 12, 13, 14, 15


class L1Error(RuntimeError):
    """A TDCALL or TDVMCALL that did not succeed."""


class L1:
    """The minimal paravisor's state: the platform and a few helpers over raw registers."""

    def __init__(self, platform: Any) -> None:
        self.p = platform

    def tdcall(self, leaf: int, **regs: int) -> list[int]:
        values = [0] * 16
        values[RAX] = leaf
        names = {
            "rcx": RCX,
            "rdx": RDX,
            "r8": R8,
            "r9": R9,
            "r10": R10,
            "r11": R11,
            "r12": R12,
            "r13": R13,
            "r14": R14,
            "r15": R15,
        }
        for name, value in regs.items():
            values[names[name]] = value
        out: list[int] = self.p.tdcall(values)
        if out[RAX] >> 63:
            raise L1Error(f"TDCALL leaf {leaf} failed with {out[RAX]:#x}")
        return out

    def vmcall(self, sub: int, **regs: int) -> list[int]:
        out = self.tdcall(LEAF_VMCALL, rcx=EXPOSE_R10_R15, r10=0, r11=sub, **regs)
        if out[R10]:
            raise L1Error(f"TDVMCALL {sub:#x} failed with R10={out[R10]:#x}")
        return out

    def write(self, gpa: int, data: bytes) -> None:
        off = self.p.offset(gpa)
        self.p.memory[off : off + len(data)] = data

    def read(self, gpa: int, length: int) -> bytes:
        off = self.p.offset(gpa)
        return bytes(self.p.memory[off : off + length])

    def say(self, text: str) -> None:
        for ch in text.encode():
            self.vmcall(GHCI_IO, r12=1, r13=1, r14=UART, r15=ch)


def get_quote(l1: L1, tdreport: bytes) -> bytes:
    """GetQuote on a 2-page shared buffer (GHCI GetQuote buffer header and QGS framing)."""
    shared = QUOTE_BUF | l1.p.shared_bit
    start, end = shared, shared + QUOTE_BUF_SIZE
    for _attempt in range(64):
        out = l1.tdcall(
            LEAF_VMCALL, rcx=EXPOSE_R10_R15, r10=0, r11=GHCI_MAP_GPA, r12=start, r13=end - start
        )
        if out[R10] == 0:
            break
        if out[R10] != 1:
            raise L1Error(f"MapGPA failed with R10={out[R10]:#x}")
        start = out[R11]
    else:
        raise L1Error("MapGPA kept asking to retry")
    body = struct.pack("<II", len(tdreport), 0) + tdreport
    message = struct.pack("<HHIII", 1, 0, 0, 16 + len(body), 0) + body
    payload = struct.pack(">I", len(message)) + message
    l1.write(shared, struct.pack("<QQII", 1, 0, len(payload), 0) + payload)
    l1.vmcall(GHCI_GET_QUOTE, r12=shared, r13=QUOTE_BUF_SIZE)
    answer = l1.read(shared, QUOTE_BUF_SIZE)  # copied once; parsed from the copy only
    _version, status, _in_len, out_len = struct.unpack_from("<QQII", answer)
    if status != 0 or 24 + out_len > len(answer):
        raise L1Error(f"GetQuote status {status:#x}, out_len {out_len}")
    (msg_len,) = struct.unpack_from(">I", answer, 24)
    _major, _minor, _type, _size, error = struct.unpack_from("<HHIII", answer, 28)
    id_size, quote_size = struct.unpack_from("<II", answer, 44)
    if error or msg_len + 4 != out_len:
        raise L1Error(f"GetQuote response error {error}, length {msg_len}")
    return answer[52 + id_size : 52 + id_size + quote_size]


def entry(platform: Any) -> str:
    """Boot: what a paravisor does first, in miniature; returns a JSON summary."""
    l1 = L1(platform)
    interrupts: list[int] = []
    platform.set_interrupt_handler(interrupts.append)
    info = l1.tdcall(LEAF_VP_INFO)
    l1.tdcall(LEAF_ACCEPT, rcx=WORK | LEVEL_2M)
    l1.say(f"{MARKER} booted\n")
    l1.write(DIGEST, hashlib.sha384(MARKER.encode()).digest())
    l1.tdcall(LEAF_RTMR_EXTEND, rcx=DIGEST, rdx=2)
    report_data = hashlib.sha384(MARKER.encode()).digest() + bytes(16)
    l1.write(REPORTDATA, report_data)
    l1.tdcall(LEAF_MR_REPORT, rcx=REPORT, rdx=REPORTDATA, r8=0)
    l1.vmcall(GHCI_SETUP_NOTIFY, r12=NOTIFY_VECTOR)
    quote = get_quote(l1, l1.read(REPORT, 1024))
    checkout_reachable = []
    for name in ("vtpm", "svsm", "tests", "tasks"):  # in the checkout, not in this image
        try:
            importlib.import_module(name)
            checkout_reachable.append(name)
        except ImportError:
            pass
    return json.dumps(
        {
            "marker": MARKER,
            "checkout_reachable": checkout_reachable,
            "image_path": platform.image_path,
            "gpaw": info[RCX] & 0x3F,
            "module_file": __file__,
            "sys_path": sys.path,
            "quote": quote.hex(),
            "report_data": report_data.hex(),
            "interrupts": interrupts,
        }
    )


def fail(platform: Any) -> str:
    """An L1 that raises after boot: the host reports "failed" naming the exception."""
    L1(platform).tdcall(LEAF_VP_INFO)
    raise L1Error("l1_min gives up on purpose")


def fatal(platform: Any) -> str:
    """An L1 that reports a fatal error with a message on a shared page."""
    l1 = L1(platform)
    page = QUOTE_BUF | platform.shared_bit
    l1.vmcall(GHCI_MAP_GPA, r12=page, r13=PAGE)
    l1.write(page, b"l1_min: fatal on purpose\0")
    l1.vmcall(GHCI_REPORT_FATAL_ERROR, r12=(1 << 63) | 0x51, r13=page)
    return "the host resumed L1 after a fatal error"


def spin(platform: Any) -> str:
    """An L1 that never returns (HLT with interrupts enabled, forever): for kill and timeout."""
    l1 = L1(platform)
    while True:
        l1.vmcall(GHCI_HLT, r12=0)
        time.sleep(0.001)


def accept4k(platform: Any) -> str:
    """ACCEPT of a page the host never added: a TD exit the host fixes with PAGE.AUG."""
    out = L1(platform).tdcall(LEAF_ACCEPT, rcx=0x700000)
    return f"{out[RAX]:#x}"


def definitions(platform: Any) -> str:
    """Import the shared TDX definitions (the image's, when it carries them); say where from."""
    import tdxdefs
    from tdxdefs.tdcall import Leaf

    return json.dumps(
        {
            "file": tdxdefs.__file__,
            "image_path": platform.image_path,
            "doc_sha256": hashlib.sha256((tdxdefs.__doc__ or "").encode()).hexdigest(),
            "vp_enter": int(Leaf.VP_ENTER),
        }
    )
