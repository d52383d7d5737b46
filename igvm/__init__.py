"""IGVM files: read, validate, write, measure (TDX MRTD, RTMR prediction) and build from recipes.

Modules: errors (IgvmError), headers (one dataclass per variable header type), format (fixed
headers, TLV walk, validation, IgvmFile, streaming scan), writer (deterministic serializer),
measure (MRTD, MrtdAccumulator, rtmr_replay), recipe (YAML schema), build, cli (`python -m igvm`).
"""
