"""Simulated attestation: TDREPORT (MAC-bound to the platform), TD quotes (DCAP v4 quote format)
and the simulated PCK certificate chain they are signed under.
"""
