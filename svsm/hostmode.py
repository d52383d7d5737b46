"""The launch options the host passed to L1: whether it serves the vTPM relay, and in which mode.

They are words of the IGVM command-line parameter (NUL-terminated ASCII at
LAUNCH_COMMAND_LINE_OFFSET of the parameter area, tdxdefs.relay); L1 measures the whole area into
RTMR0, so a verifier sees the options too.
"""

from __future__ import annotations

from dataclasses import dataclass

from tdxdefs.relay import (
    LAUNCH_COMMAND_LINE_OFFSET,
    LAUNCH_OPTION_DEV_PLATFORM_PORT,
    LAUNCH_OPTION_SERVE,
)


@dataclass(frozen=True)
class HostMode:
    """The launch options the host passed: whether it serves the relay, and in which mode."""

    serving: bool = False
    dev_platform_port: bool = False


def launch_options(parameter_area: bytes) -> HostMode:
    """The options in the IGVM command-line parameter (NUL-terminated ASCII at
    LAUNCH_COMMAND_LINE_OFFSET); the area is measured into RTMR0, so the options are too."""
    raw = parameter_area[LAUNCH_COMMAND_LINE_OFFSET:].split(b"\0", 1)[0]
    words = set(raw.decode("ascii", errors="replace").split())
    return HostMode(LAUNCH_OPTION_SERVE in words, LAUNCH_OPTION_DEV_PLATFORM_PORT in words)
