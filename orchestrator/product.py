"""The product image's parts and the TD it runs in: the recipe, the L1 image (what it packs and its
entry point), the TD's RAM and how many L2 guests it may have.

Kept apart from `orchestrator.boot` so that `invoke run --serve`, which boots the same image, does
not import what only `invoke run` uses (the relying party, a directly served vTPM).
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.l1image import build_l1_image
from tdxdefs.l2boot import TPM_CRB_BASE, TPM_CRB_SIZE
from tdxdefs.relay import LAUNCH_OPTION_DEV_PLATFORM_PORT, LAUNCH_OPTION_SERVE

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = Path(__file__).resolve().parent / "recipes" / "tdp.yaml"
L1_IMAGE = ROOT / "out" / "l1.img"  # tdp.yaml's paravisor component
L1_PACKAGES = (ROOT / "svsm", ROOT / "vtpm", ROOT / "tdxdefs")
L1_ENTRY = "svsm.entry:main"  # starts the vTPM workers, then svsm.boot.main
# 32 MiB of RAM, and the TPM CRB page as private memory: L1 keeps it without an alias, so an L2's
# CRB access exits to L1 (private MMIO) rather than out to this host.
TD_RAM = [(0, 32 << 20), (TPM_CRB_BASE, TPM_CRB_SIZE)]
NUM_L2_VMS = 1
MAX_L2_VMS = 3


def launch_options(dev_platform_port: bool) -> bytes:
    """The command line the host gives L1 for serving (`invoke run --serve`); L1 extends it into
    RTMR0 with the rest of the parameter area, so a relying party predicts it too."""
    options = [LAUNCH_OPTION_SERVE]
    if dev_platform_port:
        options.append(LAUNCH_OPTION_DEV_PLATFORM_PORT)
    return " ".join(options).encode()


def write_l1_image(path: Path = L1_IMAGE) -> bytes:
    """Build the L1 image (svsm, vtpm and tdxdefs with their bytecode, entry svsm.entry:main) and
    write it atomically."""
    image = build_l1_image(list(L1_PACKAGES), L1_ENTRY)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_bytes(image)
    tmp.replace(path)
    return image
