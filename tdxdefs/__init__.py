"""TDX architecture definitions shared by the paravisor, the simulator, the verifier and the vTPM.

Standard library only, and no import of any other package of the project, so every side of the
layering can use it and it can travel inside the L1 image (MRTD covers it). Each ABI fact is
written here once: TDCALL leaves and statuses (`tdcall`), TDVMCALL sub-functions (`tdvmcall`),
metadata field identifiers (`metadata`), VMCS encodings and exit information (`vmcs`), page
attributes (`attributes`), the L2 guest-state block (`guest_state`), TDREPORT (`report`), TD quotes
(`quote`), GetQuote framing (`getquote`) and the CC event log (`eventlog`). Binary layouts are
declared with `tdxdefs.layout.Layout`.
"""
