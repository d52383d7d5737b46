"""The L2 image a run boots (our firmware, or a user's flat binary with `--l2-image`) and the
measured descriptor page that tells L1 where it lies: both are components of the IGVM image
(orchestrator/recipes/tdp.yaml), so MRTD covers them and L1 reads them from measured memory.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.errors import OrchestratorError
from orchestrator.firmware import DEFAULT_OUTPUT, build_firmware
from svsm.l2image import L2ImageError, L2ImageLayout
from tdxdefs.l2boot import DESCRIPTOR_MAGIC, MAX_L2_IMAGE, L2ImageDescriptor

ROOT = Path(__file__).resolve().parent.parent
L2_IMAGE_GPA = 0x800000  # tdp.yaml's l2 component
L2_IMAGE = ROOT / "out" / "l2.img"
L2_DESCRIPTOR = ROOT / "out" / "l2-descriptor.bin"


def write_l2_image(
    user_image: Path | None = None, image: Path = L2_IMAGE, descriptor: Path = L2_DESCRIPTOR
) -> bytes:
    """Build the firmware (or take the user's image), check it, and write it with its descriptor."""
    if user_image is None:
        data = build_firmware(output=DEFAULT_OUTPUT).image
    else:
        if not user_image.is_file():
            raise OrchestratorError(f"--l2-image {user_image}: not a regular file")
        data = user_image.read_bytes()
        if not 0 < len(data) <= MAX_L2_IMAGE:
            raise OrchestratorError(
                f"--l2-image {user_image}: {len(data)} bytes (1 to {MAX_L2_IMAGE} allowed)"
            )
        try:
            L2ImageLayout.parse(data)
        except L2ImageError as exc:
            raise OrchestratorError(f"--l2-image {user_image}: {exc}") from exc
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(data)
    descriptor.write_bytes(L2ImageDescriptor(DESCRIPTOR_MAGIC, L2_IMAGE_GPA, len(data)).pack())
    return data
