"""Launch backends (local tdxsim, qemu-tdx), run configurations, remote runs over SSH."""
