"""KStackWatch configuration strings, parsed strictly.

The user writes exactly what they would write to ``/proc/kstackwatch``: either
the key=value form of v5..v8 (``fn=s3_victim fo=0x1c so=0x10 wl=8``) or the
positional form of v1..v4 (``s2_recurse+0x20+3 0x8:8``, i.e.
``function+ip_offset[+depth] [local_var_offset:local_var_len]``). Numbers are
decimal or 0x-hex. Where the kernel silently ignores a mistake (an unknown
key, a repeated one) and then watches the wrong thing, we refuse with a one-line
`BadInput` that names the problem, because a watch that is quietly not what the
user meant costs a whole reproduction run.

One extension: ``var=NAME`` or ``var=NAME[i]`` watches a DWARF local by name;
its address and length come from the debug info, so ``so``/``wl`` are refused
alongside it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Literal

from kswgdb.errors import BadInput

Mode = Literal["canary", "offset", "var"]

#: Watch lengths a debug register can take; 0 selects canary mode.
WATCH_LENGTHS = (0, 1, 2, 4, 8)

#: The kernel stores fo, dp and mw in u16 fields; we keep its limits.
U16_MAX = 0xFFFF

#: long name -> short name, in the order of the KStackWatch documentation.
KEYS: dict[str, str] = {
    "func_name": "fn",
    "func_offset": "fo",
    "depth": "dp",
    "max_watch": "mw",
    "sp_offset": "so",
    "watch_len": "wl",
    "auto_canary": "ac",
    "panic_hit": "ph",
    "var": "var",
}
_CANONICAL = {**{long: long for long in KEYS}, **{short: long for long, short in KEYS.items()}}

#: NAME, NAME@0xADDR, NAME@FILE (a static defined in several files) or 0xADDR.
_SYMBOL_RE = re.compile(
    r"(?:[A-Za-z_.$][A-Za-z0-9_.$]*(?:@[A-Za-z0-9_./+-]+)?|0[xX][0-9a-fA-F]+)\Z")
_VAR_RE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>[^\]]*)\])?\Z")
_NUMBER_RE = re.compile(r"(?P<sign>[+-]?)(?:0[xX](?P<hex>[0-9a-fA-F]+)|(?P<dec>[0-9]+))\Z")
#: Flags are 0 or 1, as KStackWatch's own parser takes them: "yes" is a typo, not a 1.
_TRUE = {"1"}
_FALSE = {"0"}


@dataclass(frozen=True)
class VarRef:
    """A DWARF local named by the user, optionally one element of an array."""

    name: str
    index: int | None = None

    def __str__(self) -> str:
        return self.name if self.index is None else f"{self.name}[{self.index}]"


@dataclass(frozen=True)
class WatchConfig:
    """One watch, as the user asked for it (nothing resolved against symbols yet)."""

    func: str
    offset: int
    depth: int = 0
    max_watch: int = 0
    sp_offset: int = 0
    watch_len: int = 0
    auto_canary: bool = False
    panic_hit: bool = False
    var: VarRef | None = None
    text: str = field(default="", compare=False)

    @property
    def mode(self) -> Mode:
        """Which address the watch covers: the canary slot, SP+so, or a named local."""
        if self.var is not None:
            return "var"
        return "canary" if self.watch_len == 0 else "offset"

    def canonical(self) -> str:
        """The config in short key=value form, only non-default keys after fn/fo."""
        words = [f"fn={self.func}", f"fo={self.offset:#x}"]
        if self.depth:
            words.append(f"dp={self.depth}")
        if self.max_watch:
            words.append(f"mw={self.max_watch}")
        if self.var is not None:
            words.append(f"var={self.var}")
        elif self.watch_len:
            sign = "-" if self.sp_offset < 0 else ""
            words += [f"so={sign}{abs(self.sp_offset):#x}", f"wl={self.watch_len}"]
        if self.auto_canary:
            words.append("ac=1")
        if self.panic_hit:
            words.append("ph=1")
        return " ".join(words)

    def __str__(self) -> str:
        return self.text or self.canonical()


def parse_watch(text: str) -> WatchConfig:
    """Parse one KStackWatch config string; raise `BadInput` naming the problem."""
    if not isinstance(text, str):
        raise BadInput(f"watch config must be a string, not {type(text).__name__}")
    tokens = text.split()
    if not tokens:
        raise BadInput("empty watch config: need at least fn=FUNCTION fo=OFFSET")
    values: dict[str, str] = {}
    rest = tokens
    if "=" not in tokens[0]:
        values, rest = _positional(tokens)
    for token in rest:
        key, sep, value = token.partition("=")
        if not sep:
            raise BadInput(f"{token!r} is not key=value (keys: {', '.join(KEYS.values())})")
        long = _CANONICAL.get(key)
        if long is None:
            raise BadInput(f"unknown key {key!r}{_did_you_mean(key)}")
        if long in values:
            raise BadInput(f"duplicate key {key!r} ({KEYS[long]}/{long} given twice)")
        if not value:
            raise BadInput(f"empty value for {key!r}")
        values[long] = value
    return _build(values, " ".join(tokens))


def parse_watches(texts: list[str]) -> list[WatchConfig]:
    """Parse several configs (one per watch); errors say which one is wrong."""
    configs: list[WatchConfig] = []
    for i, text in enumerate(texts, 1):
        try:
            cfg = parse_watch(text)
        except BadInput as exc:
            if len(texts) == 1:
                raise
            raise BadInput(f"watch {i}: {exc}") from None
        for j, earlier in enumerate(configs, 1):
            if earlier == cfg:
                raise BadInput(f"watch {i} repeats watch {j} ({cfg.canonical()})")
        configs.append(cfg)
    return configs


def _positional(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """The v1..v4 form ``func+off[+depth] [so:len]``; key=value tokens may follow."""
    parts = tokens[0].split("+")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadInput(
            f"{tokens[0]!r} is neither key=value nor func+offset[+depth] "
            "(e.g. 'fn=my_func fo=0x1c' or 'my_func+0x1c')"
        )
    values = {"func_name": parts[0], "func_offset": parts[1]}
    if len(parts) == 3:
        values["depth"] = parts[2]
    rest = tokens[1:]
    if rest and "=" not in rest[0]:
        so, sep, wl = rest[0].partition(":")
        if not sep or not so or not wl:
            raise BadInput(f"{rest[0]!r} is not local_var_offset:local_var_len (e.g. 0x8:8)")
        values["sp_offset"], values["watch_len"] = so, wl
        rest = rest[1:]
    return values, rest


def _build(values: dict[str, str], text: str) -> WatchConfig:
    """Check each value and the combinations, then build the config."""
    for required in ("func_name", "func_offset"):
        if required not in values:
            raise BadInput(f"missing {KEYS[required]}= ({required}): every watch needs fn and fo")
    func = values["func_name"]
    if not _SYMBOL_RE.match(func):
        raise BadInput(f"fn={func!r} is not a symbol name")
    offset = _unsigned(values, "func_offset", U16_MAX)
    depth = _unsigned(values, "depth", U16_MAX)
    max_watch = _unsigned(values, "max_watch", U16_MAX)
    sp_offset = _number(values["sp_offset"], "sp_offset") if "sp_offset" in values else 0
    watch_len = _unsigned(values, "watch_len", U16_MAX)
    if watch_len not in WATCH_LENGTHS:
        raise BadInput(f"wl={values['watch_len']} must be 1, 2, 4 or 8 (or 0 for the canary)")
    auto_canary = _flag(values, "auto_canary")
    panic_hit = _flag(values, "panic_hit")
    var = _var(values["var"]) if "var" in values else None
    if auto_canary and watch_len:
        raise BadInput(f"ac=1 watches the canary but wl={watch_len} asks for SP+so: pick one")
    if sp_offset and not watch_len and var is None:
        raise BadInput("so= without wl= has no effect (canary mode ignores so): add wl=1/2/4/8")
    if var is not None:
        given = [KEYS[k] for k in ("sp_offset", "watch_len", "auto_canary") if k in values]
        if given:
            drop = "/".join(given)
            raise BadInput(f"var={var} takes its address and size from DWARF: drop {drop}")
    return WatchConfig(
        func=func, offset=offset, depth=depth, max_watch=max_watch, sp_offset=sp_offset,
        watch_len=watch_len, auto_canary=auto_canary, panic_hit=panic_hit, var=var, text=text,
    )


def _number(raw: str, long: str) -> int:
    """Decimal or 0x-hex with an optional sign; a leading 0 would be octal in the kernel."""
    m = _NUMBER_RE.match(raw)
    if m is None:
        raise BadInput(f"{KEYS[long]}={raw!r} is not a number (decimal or 0x-hex)")
    if m["dec"] is not None and len(m["dec"]) > 1 and m["dec"].startswith("0"):
        raise BadInput(
            f"{KEYS[long]}={raw} is ambiguous (the kernel reads a leading 0 as octal): "
            "write it in decimal or 0x-hex"
        )
    value = int(m["hex"], 16) if m["hex"] is not None else int(m["dec"])
    if value >= 1 << 63:
        raise BadInput(f"{KEYS[long]}={raw} is out of range")
    return -value if m["sign"] == "-" else value


def _unsigned(values: dict[str, str], long: str, limit: int) -> int:
    if long not in values:
        return 0
    value = _number(values[long], long)
    if value < 0:
        raise BadInput(f"{KEYS[long]}={values[long]} must not be negative")
    if value > limit:
        raise BadInput(f"{KEYS[long]}={values[long]} is out of range (at most {limit:#x})")
    return value


def _flag(values: dict[str, str], long: str) -> bool:
    raw = values.get(long, "0").lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise BadInput(f"{KEYS[long]}={values[long]!r} must be 0 or 1")


def parse_var(raw: str) -> VarRef:
    """``NAME`` or ``NAME[i]`` (``var=`` and ``disasm --var``)."""
    return _var(raw)


def parse_number(raw: str, key: str) -> int:
    """A decimal or 0x-hex number for ``key``, as in a config."""
    return _number(raw, key)


def _var(raw: str) -> VarRef:
    m = _VAR_RE.match(raw)
    if m is None:
        raise BadInput(f"var={raw!r} must be NAME or NAME[index]")
    if m["index"] is None:
        return VarRef(m["name"])
    number = _NUMBER_RE.match(m["index"])
    if number is None or number["sign"]:
        raise BadInput(f"var={raw!r}: the index must be a decimal or 0x-hex number >= 0")
    index = int(number["hex"], 16) if number["hex"] is not None else int(number["dec"])
    return VarRef(m["name"], index)


def _did_you_mean(key: str) -> str:
    names = list(_CANONICAL)
    close = difflib.get_close_matches(key.lower(), names, n=1, cutoff=0.5)
    if close:
        long = _CANONICAL[close[0]]
        return f" (did you mean {KEYS[long]!r}/{long!r}?)"
    return f" (keys: {', '.join(KEYS.values())})"


__all__ = ["KEYS", "WATCH_LENGTHS", "VarRef", "WatchConfig", "parse_watch", "parse_watches"]
