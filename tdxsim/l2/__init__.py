"""L2 execution: one L2 vCPU running real x86-64 code under unicorn, as the Intel TDX Module
TD Partitioning Architecture Specification describes TDG.VP.ENTER and L2 exits.

`vcpu` runs the entry/exit loop and assembles exits; `decode` finds and decodes the
instructions that exit (Intel SDM Vol. 3, chapter "VMX Non-Root Operation"); `vapic` is the
virtual APIC page (IRR/ISR, PPR, EOI); `paging` walks L2's 4-level page tables; `events`
delivers exceptions and interrupts through L2's IDT; `ept` keeps unicorn's memory protections
equal to the VM's aliases; `codepages` keeps the scanned code pages and unicorn's exits true
while code changes; `registers` moves register batches and the L2 guest-state block; `exits`
holds what an exit reports.
"""
