"""``kswgdb disasm`` and ``kswgdb symbols``: the commands that only read the image's files.

Apart from `kswgdb.commands` so that they import none of the run machinery (QEMU,
the engines, the renderers of hits): `kswgdb.cli` dispatches them here directly,
and a listing of the Debian vmlinux starts in a tenth of a second instead of half a
second of imports.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kswgdb import image as image_mod
from kswgdb.errors import BadInput
from kswgdb.exitcodes import ExitStatus
from kswgdb.render.console import output_console

#: The subcommands this module runs.
FILE_COMMANDS = ("disasm", "symbols")


def dispatch(args: argparse.Namespace) -> int:
    return {"disasm": cmd_disasm, "symbols": cmd_symbols}[args.command](args)


def cmd_disasm(args: argparse.Namespace) -> int:
    from kswgdb.render.disasm import render_disasm
    from kswgdb.symbols.listing import build_listing
    from kswgdb.symbols.program import Program

    img = image_mod.load(args.image)
    program = Program.load(img.symbols)
    if not program.symtab.lookup_all(args.func):
        from kswgdb.symbols.modinfo import read_module
        from kswgdb.watch.modules import find_module_function, module_files

        given = [read_module(Path(m)) for m in args.module]
        found = find_module_function(
            module_files(img.modules_dir, {m.name: m.path for m in given}), args.func)
        if found is not None:       # a module function (addresses are placeholders)
            program = found[1]
    request = disasm_request(args)
    listing = build_listing(program, args.func, var=request)
    if request.var is not None and all(v.name != request.var for v in listing.locals):
        raise BadInput(f"--var {args.var}: {listing.note}")
    output_console().print(render_disasm(listing))
    return ExitStatus.OK


def disasm_request(args: argparse.Namespace):
    """``--var``/``--so``/``--wl`` checked with the config parser's own rules."""
    from kswgdb.symbols.listing import WatchRequest
    from kswgdb.watch.config import parse_number, parse_var

    if args.var is not None and (args.so is not None or args.wl is not None):
        raise BadInput("--var takes its address and size from DWARF: drop --so/--wl")
    if (args.so is None) != (args.wl is None):
        raise BadInput("--so and --wl go together (SP offset and bytes to watch)")
    if args.var is not None:
        ref = parse_var(args.var)
        return WatchRequest(var=ref.name, index=ref.index)
    if args.so is not None:
        wl = parse_number(args.wl, "watch_len")
        if wl not in (1, 2, 4, 8):
            raise BadInput(f"--wl {args.wl}: a watch covers 1, 2, 4 or 8 bytes")
        return WatchRequest(so=parse_number(args.so, "sp_offset"), wl=wl)
    return WatchRequest()


def cmd_symbols(args: argparse.Namespace) -> int:
    from kswgdb.symbols.program import Program

    img = image_mod.load(args.image)
    program = Program.load(img.symbols)
    out = output_console()
    table = program.symtab
    found = sorted((s for s in table.symbols if s.kind == "func" and args.pattern in s.name),
                   key=lambda s: (s.name, s.addr))
    if not found:
        raise BadInput(f"no function matches {args.pattern!r} in {img.symbols}")
    for sym in found:
        # a static name several files define: say how a config picks this one
        pick = f"  fn={sym.name}@{sym.addr:#x}" if len(table.lookup_all(sym.name)) > 1 else ""
        out.print(f"{sym.addr:#018x} {sym.size:#7x} {sym.name}{pick}", markup=False,
                  soft_wrap=True)
    return ExitStatus.OK
