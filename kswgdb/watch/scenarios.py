"""Watch configs for the test kernel's scenarios, derived from the image, not typed.

`images/kswtest.toml` says per scenario which function to watch and which slot
(the canary or a named local); the arming offset comes from the symbol layer's
suggestion (`kswgdb.symbols.armpoint`: after every store of the function into the
slot), so a rebuilt kernel with different offsets still gets a right config.
"""

from __future__ import annotations

from kswgdb.errors import BadInput
from kswgdb.image import Image
from kswgdb.symbols.program import Program
from kswgdb.symbols.prologue import FrameSlot
from kswgdb.watch.config import parse_var


def scenario_watch(image: Image, scenario: int, program: Program | None = None) -> str:
    """A KStackWatch config string that watches what scenario ``scenario`` corrupts."""
    table = image.scenarios.get(str(scenario))
    if not table or not table.get("victim"):
        raise BadInput(f"image {image.name} describes no victim for scenario {scenario}")
    program = program or Program.load(image.symbols)
    victim, target = table["victim"], table.get("target", "canary")
    analysis = program.analyze(victim)
    depth = int(table.get("depth", 0))
    extra = f" dp={depth}" if depth else ""
    if target == "canary":
        return f"fn={victim} fo={analysis.suggest_offset():#x}{extra}"
    func = program.function(victim)
    ref = parse_var(target)
    var = program.local(victim, ref.name, func.addr + analysis.suggest_offset())
    slot = FrameSlot(var.cfa_offset + (ref.index or 0) * (var.size or 0), var.size)
    # arm = "after-init": the scenario's expected hit *is* the function's own later
    # store (KStackWatch's recursion test), which the arming analysis rightly avoids.
    fo = (analysis.after_init_offset(slot) if table.get("arm") == "after-init"
          else analysis.suggest_offset(slot))
    return f"fn={victim} fo={fo:#x} var={target}{extra}"
