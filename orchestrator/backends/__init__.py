"""Launch backends beyond the local simulator: `qemu_tdx` launches a TD on a real TDX host."""
