"""Static knowledge of the guest kernel's ELF: symbols, DWARF, code.

Start from `kswgdb.symbols.program.Program`, which loads each part on first use:

- ``elf``      symbol table (cached on disk), ``name+0xoff/0xsize``, bytes by address
- ``dwarf``    opening the DWARF, compile units, DIE names/types/locations
- ``lines``    address -> file:line
- ``locals``   a function's locals as frame slots (CFA/RBP offsets)
- ``types``    struct member offsets, type sizes, global addresses (drgn-style)
- ``disasm``   capstone decoding, instruction boundaries, the writer of a hit
- ``frame``    RSP/RBP relative to the CFA at each instruction
- ``prologue`` the canary slot, initialising stores, the suggested arming offset
- ``listing``  the annotated listing behind ``kswgdb disasm``
- ``modinfo``  a ``.ko``'s ``.modinfo`` (name, vermagic) checked against the kernel's
- ``running``  is this symbol file the running kernel? (build-id / code in guest memory)

Nothing here imports ``kswgdb.watch``, the CLI or the renderers.
"""
