"""Remote runs: the project's own suite on hosts reached over SSH, one host or a fleet in parallel.

One module per concept: `inventory` (which hosts), `connection` (paramiko session, host keys,
commands with timeouts), `preflight` (what a host has), `transfer` (the checkout over SFTP),
`runner` (one host's steps), `fleet` (hosts in parallel, live progress, the final table) and
`junit` (per-host and merged JUnit XML).
"""
