"""Running one guest instruction on the host, so a breakpoint is left without a step.

- `x86`   `InstructionEmulator`: decodes (capstone) and runs the instruction under a
          breakpoint against the guest's registers and memory, or says why it will not
          (the caller then single-steps); used by `kswgdb.run.stub_target.StubTarget`
"""
