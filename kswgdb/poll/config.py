"""``--poll`` strings: what to watch in guest *physical* memory, parsed strictly.

The timer-based software watchpoint this replaces took its parameters as module
options and quietly did nothing with a bad one; a poll that watches the wrong
bytes costs a reproduction run that may take a week, so every mistake here is a
one-line `BadInput` naming the offending word.

Grammar (space-separated ``key=value`` words, numbers decimal or 0x-hex)::

    pa=ADDR [len=1|2|4|8] (to=V | from=V | any=1) [mask=M]
    region=START-END                                  (any change in [START, END))
    ... [interval=10us|1ms|30ms] [on-hit=report|freeze|dump] [once=0|1]

``to=V`` fires when the (masked) value becomes V, ``from=V`` when it stops being V
(after having been V), ``any=1`` on any change. A region reports the offset and
the bytes that changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kswgdb.errors import BadInput

VALUE_LENGTHS = (1, 2, 4, 8)
ON_HIT = ("report", "freeze", "dump")
#: Bounds on the polling period: below 1 µs a Python loop cannot keep up; above
#: 10 s a poll is no longer a watchpoint.
MIN_INTERVAL, MAX_INTERVAL = 1e-6, 10.0
#: A region is compared as a whole on every sample: keep it to what one read can do.
MAX_REGION = 16 << 20
DEFAULT_INTERVAL = 1e-3

_KEYS = ("pa", "len", "to", "from", "any", "mask", "region", "interval", "on-hit", "once")
_ALIASES = {"on_hit": "on-hit", "length": "len"}
_NUMBER_RE = re.compile(r"(?:0[xX](?P<hex>[0-9a-fA-F_]+)|(?P<dec>[0-9_]+))\Z")
_INTERVAL_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>ns|us|µs|ms|s)\Z")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_BOOL = {"1": True, "0": False, "yes": True, "no": False, "on": True, "off": False,
         "true": True, "false": False}


@dataclass(frozen=True)
class PollSpec:
    """One physical-memory poll as the user asked for it (no memory map applied yet)."""

    addr: int
    length: int
    to: int | None = None
    from_: int | None = None
    any_change: bool = False
    mask: int | None = None
    region: bool = False
    interval: float = DEFAULT_INTERVAL
    on_hit: str = "report"
    once: bool = True
    text: str = ""

    @property
    def trigger(self) -> str:
        """"to", "from" or "any": what kind of change fires."""
        if self.to is not None:
            return "to"
        if self.from_ is not None:
            return "from"
        return "any"

    def describe(self) -> str:
        """A short human phrase: ``8 bytes at pa 0x1000 becoming 0x33``."""
        where = (f"region [{self.addr:#x}, {self.addr + self.length:#x})" if self.region
                 else f"{self.length} byte(s) at pa {self.addr:#x}")
        masked = f" (mask {self.mask:#x})" if self.mask is not None else ""
        what = {"to": f"becoming {self.to:#x}" if self.to is not None else "",
                "from": f"changing from {self.from_:#x}" if self.from_ is not None else "",
                "any": "any change"}[self.trigger]
        return f"{where}, {what}{masked}, every {format_interval(self.interval)}"

    def canonical(self) -> str:
        """The spec as a normalised ``--poll`` string."""
        words = ([f"region={self.addr:#x}-{self.addr + self.length:#x}"] if self.region
                 else [f"pa={self.addr:#x}", f"len={self.length}"])
        if self.to is not None:
            words.append(f"to={self.to:#x}")
        if self.from_ is not None:
            words.append(f"from={self.from_:#x}")
        if self.any_change and not self.region:
            words.append("any=1")
        if self.mask is not None:
            words.append(f"mask={self.mask:#x}")
        words += [f"interval={format_interval(self.interval)}", f"on-hit={self.on_hit}",
                  f"once={int(self.once)}"]
        return " ".join(words)


def format_interval(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:g}{unit}"
    return f"{seconds / 1e-9:g}ns"


def parse_polls(texts: list[str]) -> list[PollSpec]:
    """Parse every ``--poll``; the first bad one raises, naming which it was."""
    return [parse_poll(t) for t in texts]


def parse_poll(text: str) -> PollSpec:
    """One ``--poll`` string -> `PollSpec`, or `BadInput` with a one-line reason."""
    words = text.split()
    if not words:
        raise BadInput("--poll '': empty (try --poll 'pa=0x1000 len=8 to=0x33')")
    seen: dict[str, str] = {}
    for word in words:
        key, eq, value = word.partition("=")
        key = _ALIASES.get(key, key)
        if not eq or not value:
            raise BadInput(f"--poll {text!r}: {word!r} is not key=value")
        if key not in _KEYS:
            raise BadInput(f"--poll {text!r}: unknown key {key!r} "
                           f"(known: {', '.join(_KEYS)})")
        if key in seen:
            raise BadInput(f"--poll {text!r}: {key} given twice")
        seen[key] = value

    def bad(msg: str) -> BadInput:
        return BadInput(f"--poll {text!r}: {msg}")

    def number(key: str) -> int:
        m = _NUMBER_RE.match(seen[key])
        if not m:
            raise bad(f"{key}={seen[key]!r} is not a number (decimal or 0x-hex)")
        return int(m.group("hex"), 16) if m.group("hex") else int(m.group("dec"))

    def boolean(key: str) -> bool:
        v = seen[key].lower()
        if v not in _BOOL:
            raise bad(f"{key}={seen[key]!r} is not 0 or 1")
        return _BOOL[v]

    if ("pa" in seen) == ("region" in seen):
        raise bad("give exactly one of pa= and region=")
    region = "region" in seen
    if region:
        start_s, dash, end_s = seen["region"].partition("-")
        if not dash:
            raise bad(f"region={seen['region']!r} is not START-END")
        seen["_start"], seen["_end"] = start_s, end_s
        addr, end = number("_start"), number("_end")
        if end <= addr:
            raise bad(f"region {seen['region']} is empty (END is exclusive, must be > START)")
        length = end - addr
        if length > MAX_REGION:
            raise bad(f"region of {length} bytes is larger than {MAX_REGION >> 20} MiB")
        for key in ("len", "to", "from", "mask"):
            if key in seen:
                raise bad(f"{key}= does not apply to a region (a region reports any change)")
        if "any" in seen and not boolean("any"):
            raise bad("any=0 makes no sense for a region")
        any_change, to, from_, mask = True, None, None, None
    else:
        addr = number("pa")
        length = number("len") if "len" in seen else 8
        if length not in VALUE_LENGTHS:
            raise bad(f"len={length} is not one of {', '.join(map(str, VALUE_LENGTHS))} "
                      "(use region=START-END for a range)")
        if addr % length:
            raise bad(f"pa={addr:#x} is not aligned to len={length}")
        to = number("to") if "to" in seen else None
        from_ = number("from") if "from" in seen else None
        any_change = boolean("any") if "any" in seen else False
        if "any" in seen and not any_change:
            raise bad("any=0: say what fires instead (to= or from=)")
        triggers = [k for k in ("to", "from", "any") if k in seen]
        if len(triggers) != 1:
            raise bad("give exactly one of to=, from= and any=1"
                      + (f" (got {', '.join(triggers)})" if triggers else ""))
        mask = number("mask") if "mask" in seen else None
        limit = (1 << (8 * length)) - 1
        for key, val in (("to", to), ("from", from_), ("mask", mask)):
            if val is not None and val > limit:
                raise bad(f"{key}={val:#x} does not fit in len={length} byte(s)")
        if mask == 0:
            raise bad("mask=0 hides every bit")
        if mask is not None:
            for key, val in (("to", to), ("from", from_)):
                if val is not None and val & ~mask:
                    raise bad(f"{key}={val:#x} has bits outside mask={mask:#x}: it can never match")
    if addr >= 1 << 52:
        raise bad(f"address {addr:#x} is beyond x86-64's 52-bit physical address space")

    interval = DEFAULT_INTERVAL
    if "interval" in seen:
        m = _INTERVAL_RE.match(seen["interval"])
        if not m:
            raise bad(f"interval={seen['interval']!r} is not a time like 10us, 1ms, 30ms")
        interval = float(m.group("num")) * _UNITS[m.group("unit")]
        if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
            raise bad(f"interval={seen['interval']} is outside 1us..10s")
    on_hit = seen.get("on-hit", "report")
    if on_hit not in ON_HIT:
        raise bad(f"on-hit={on_hit!r} is not one of {', '.join(ON_HIT)}")
    once = boolean("once") if "once" in seen else True
    return PollSpec(addr=addr, length=length, to=to, from_=from_, any_change=any_change,
                    mask=mask, region=region, interval=interval, on_hit=on_hit, once=once,
                    text=text)
