"""Fuzz: 100,000 mutated IGVM files, each parsed to an IgvmFile or rejected with IgvmError."""

from __future__ import annotations

import random
import struct
import time
import warnings
import zlib

from igvm.errors import IgvmError
from igvm.format import IgvmFile
from igvm.headers import (
    IGVM_PLATFORM_SEV_SNP,
    GuestPolicy,
    MemoryMap,
    PageData,
    ParameterArea,
    ParameterInsert,
    RequiredMemory,
    SupportedPlatform,
    VpContext,
    VpCount,
)
from tests.support.igvm_files import tdx_platform, v4_image

MUTATED_INPUTS = 100_000
TIME_BUDGET_SECONDS = 150.0
SEED = 0x1C0FFEE


def _seeds() -> list[bytes]:
    multi = IgvmFile(
        [tdx_platform(1), SupportedPlatform(2, 0, IGVM_PLATFORM_SEV_SNP, 1, 0)],
        [GuestPolicy(0x2, 1)],
        [
            ParameterArea(0x2000, 0, b"init"),
            VpCount(0, 0),
            MemoryMap(0, 0x100),
            PageData(0x1000, 3, data=b"code"),
            VpContext(0xFFFFFFFFF000, 2, 0, b"vmsa"),
            RequiredMemory(0x100000, 1, 0x10000),
            ParameterInsert(0x8000, 1, 0),
        ],
    )
    return [v4_image().to_bytes(), multi.to_bytes()]


def _fix_crc(raw: bytearray) -> None:
    if len(raw) < 24:
        return
    vh_offset, vh_size = struct.unpack_from("<II", raw, 8)
    head = bytes(raw[:20]) + bytes(4) + bytes(raw[24 : min(vh_offset, 32)])
    raw[20:24] = struct.pack("<I", zlib.crc32(head + bytes(raw[vh_offset : vh_offset + vh_size])))


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    raw = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        if len(raw) < 8:
            break
        kind = rng.random()
        # Most mutations land in the headers, where the rules are.
        limit = len(raw) if rng.random() < 0.2 else min(len(raw), 400)
        where = rng.randrange(max(limit, 1))
        if kind < 0.4:
            raw[where] ^= 1 << rng.randrange(8)
        elif kind < 0.6:
            raw[where] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif kind < 0.7:
            struct.pack_into(
                "<I",
                raw,
                min(where, len(raw) - 4) & ~3,
                rng.choice((0, 1, 0x1000, 0x8000_0000, 0xFFFF_FFFF, rng.getrandbits(32))),
            )
        elif kind < 0.8:
            del raw[where:]
        elif kind < 0.9:
            raw[where:where] = rng.randbytes(rng.choice((1, 4, 8, 16)))
        else:
            del raw[where : where + rng.choice((1, 4, 8, 24))]
    if rng.random() < 0.7:
        _fix_crc(raw)
    return bytes(raw)


def test_100k_mutations_give_a_valid_file_or_igvm_error() -> None:
    rng = random.Random(SEED)
    seeds = _seeds()
    outcomes = {"valid": 0, "rejected": 0}
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for number in range(MUTATED_INPUTS):
            sample = _mutate(rng, seeds[number % len(seeds)])
            try:
                parsed = IgvmFile.from_bytes(sample)
            except IgvmError as exc:
                assert exc.rule
                outcomes["rejected"] += 1
            else:
                parsed.to_bytes()  # a file we accept is one we can write back
                outcomes["valid"] += 1
            if number % 1000 == 0:
                assert time.monotonic() < deadline, f"fuzz exceeded its budget at {number}"
    assert sum(outcomes.values()) == MUTATED_INPUTS
    assert outcomes["rejected"] > 1000 and outcomes["valid"] > 100, outcomes
