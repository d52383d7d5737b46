"""Transitional re-export of the TDX ABI definitions for `tdxsim.l2cpu` only; to be removed.

Every ABI fact lives in `tdxdefs`; import it from there. This module exists so the L2 vCPU module
keeps working while it is rewritten; it declares nothing of its own.
"""

from __future__ import annotations

from tdxdefs.attributes import *  # noqa: F403
from tdxdefs.guest_state import *  # noqa: F403
from tdxdefs.metadata import *  # noqa: F403
from tdxdefs.tdcall import *  # noqa: F403
from tdxdefs.tdvmcall import *  # noqa: F403
from tdxdefs.vmcs import *  # noqa: F403
from tdxdefs.x86 import *  # noqa: F403
