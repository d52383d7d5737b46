"""The untrusted host side: GHCI services, the host VMM process loop, the TD process, the channel
between them, fault injection, the host's shared-only view of TD memory and building a TD from IGVM.
"""
