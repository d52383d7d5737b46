"""The L1 paravisor: memory, page aliases, L2 vCPU loop, exits, interrupts, CRB and vTPM service.

It reaches the platform only through the register-level `tdcall` entry point it is given.
"""
