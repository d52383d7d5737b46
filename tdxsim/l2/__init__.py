"""L2 execution: the L2 vCPUs of a partitioned TD and the exits they take to L1 or the host.

Intel TDX Module TD Partitioning Architecture Specification (L2 VM entry and exit).
"""
