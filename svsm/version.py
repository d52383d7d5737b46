"""The paravisor's version string: L1 extends it (NUL terminated, EV_S_CRTM_VERSION) into PCR0 of
every vTPM, so a relying party needs it to predict PCR0 and can import it without L1's boot code."""

SVSM_VERSION = "tdp-svsm 0.1.0"
