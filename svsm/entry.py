"""L1's entry point in the measured image (`orchestrator.product.L1_ENTRY`).

It starts the vTPM workers' launcher before anything else, after one TDCALL for NUM_L2_VMS and
with almost nothing imported: the launcher's start-up (a fresh interpreter importing the vTPM) is
the longest step of L1's boot, and the rest of L1 (`svsm.boot` and all it imports) then loads
while the launcher starts on the other core. `svsm.boot.main` is the boot itself.
"""

from __future__ import annotations

from svsm.errors import SvsmError
from svsm.platform import Platform
from svsm.tdcall import Tdcall
from svsm.vtpm_launcher import StartedLauncher, start_launcher
from tdxdefs.metadata import NUM_L2_VMS_FIELD


def main(platform: Platform) -> bytes:
    """Start the vTPM workers' launcher, then boot (svsm.boot.main) with it. If it cannot be
    started here, svsm.boot tries again inside step 3, whose failure names the step."""
    started: StartedLauncher | None
    try:
        count = Tdcall(platform.tdcall).vm_rd(NUM_L2_VMS_FIELD)
        started = start_launcher(count, platform.image_path)
    except (SvsmError, OSError):
        started = None
    try:
        from svsm import boot  # the rest of L1, imported while the launcher starts
    except BaseException:
        if started is not None:
            started.close()
        raise
    return boot.main(platform, started)
