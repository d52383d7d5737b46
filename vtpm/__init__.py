"""The ephemeral vTPM: libtpms through ctypes with in-memory NV, manufacture, and socket servers."""
