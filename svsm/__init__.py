"""The L1 paravisor. Today: boot steps 2-4 (memory, RTMRs, vTPM bound to a TD quote, PCR0).

It reaches the platform only through the register-level `tdcall` entry point it is given.
"""
