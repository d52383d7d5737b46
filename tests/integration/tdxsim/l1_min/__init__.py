"""A minimal L1 for the TD-process tests: boots from the measured image and exercises TDCALLs."""
