"""The relying party: TD quote parsing and verification, and the combined vTPM attestation chain."""
