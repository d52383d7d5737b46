"""The simulated TDX module: TDCALL dispatch, SEPT and L2 aliases, TD memory, L2 VMCS, TD state.

Models the Intel TDX Module v1.5 ABI Specification and the Intel TDX Module TD Partitioning
Architecture Specification, including the host-side TDH.* build operations.
"""
