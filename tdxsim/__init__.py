"""A software TDX 1.5 platform with TD partitioning: module model, L2 vCPUs, host VMM, attestation.

Everything this package signs or attests is labelled as simulated. Every exception it raises
derives from `TdxsimError`.
"""

from tdxsim.errors import TdxsimError

__all__ = ["TdxsimError"]
