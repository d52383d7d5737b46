"""IGVM files: read, validate, write, measure (TDX MRTD, RTMR prediction) and build from recipes."""
