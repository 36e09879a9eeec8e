"""What a ``.ko`` file says about itself: its ``.modinfo`` (name, vermagic, depends).

``--module PATH.ko`` is checked here before any guest starts: the file must be
an x86-64 ELF relocatable with a ``.modinfo`` section, and its ``vermagic``
must be the image kernel's own (the ``vermagic`` string in the vmlinux): a
module built for another kernel would be refused by the guest's ``insmod``
("disagrees about version of symbol", "invalid module format") and its watch
would wait for a load that never comes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from kswgdb.errors import BadInput

#: The vmlinux object holding VERMAGIC_STRING (kernel/module/main.c), as insmod compares it.
KERNEL_VERMAGIC_SYMBOL = "vermagic"


@dataclass(frozen=True)
class ModuleInfo:
    """One checked ``.ko``: where it is and what its ``.modinfo`` says."""

    path: Path
    name: str                        # the module's name in the kernel (``name=``)
    vermagic: str
    depends: tuple[str, ...] = ()
    fields: dict[str, list[str]] = field(default_factory=dict, compare=False)

    @property
    def release(self) -> str:
        """The kernel release it was built for (vermagic's first word)."""
        return self.vermagic.split(" ", 1)[0]


def parse_modinfo(raw: bytes) -> dict[str, list[str]]:
    """``key=value`` strings separated by NULs (and alignment padding) -> key -> values."""
    out: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode("utf-8", "replace").partition("=")
        if sep and key:
            out.setdefault(key, []).append(value)
    return out


def read_module(path: Path, what: str = "--module") -> ModuleInfo:
    """Check ``path`` is a loadable x86-64 kernel module; `BadInput` (one line) if not."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head != b"\x7fELF":
                raise BadInput(f"{what} {path}: not an ELF file")
            f.seek(0)
            elf = ELFFile(f)
            if elf["e_type"] != "ET_REL":
                raise BadInput(f"{what} {path}: not a kernel module (an ELF "
                               f"{elf['e_type']}, not a relocatable .ko)")
            if elf["e_machine"] != "EM_X86_64":
                raise BadInput(f"{what} {path}: built for {elf['e_machine']}, not x86-64")
            section = elf.get_section_by_name(".modinfo")
            if section is None or elf.get_section_by_name(".gnu.linkonce.this_module") is None:
                raise BadInput(f"{what} {path}: not a kernel module (no .modinfo or "
                               "this_module section: an object file not linked by modpost?)")
            fields = parse_modinfo(section.data())
    except FileNotFoundError:
        raise BadInput(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{what} {path}: is a directory (give the .ko file)") from None
    except OSError as exc:
        raise BadInput(f"{what} {path}: {exc.strerror or exc}") from None
    except (ELFError, ValueError, KeyError) as exc:
        raise BadInput(f"{what} {path}: a malformed ELF file ({exc})") from None
    vermagic = (fields.get("vermagic") or [""])[0]
    if not vermagic:
        raise BadInput(f"{what} {path}: its .modinfo has no vermagic (not built by kbuild?)")
    name = (fields.get("name") or [path.stem.replace("-", "_")])[0]
    depends = tuple(d for d in ",".join(fields.get("depends", [])).split(",") if d)
    return ModuleInfo(path=path.resolve(), name=name, vermagic=vermagic, depends=depends,
                      fields=fields)


def kernel_vermagic(symtab) -> str | None:
    """The vmlinux's own vermagic string (None when the file does not have the symbol)."""
    found = symtab.lookup_all(KERNEL_VERMAGIC_SYMBOL)
    if not found:
        return None
    sym = found[0]
    try:
        raw = symtab.read_bytes(sym.addr, sym.size or 128)
    except BadInput:
        return None
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace") or None


def check_vermagic(module: ModuleInfo, kernel: str | None, what: str = "--module") -> None:
    """The module was built for this kernel: its vermagic equals the kernel's, exactly."""
    if kernel is None or module.vermagic == kernel:
        return
    mine, theirs = module.vermagic.strip(), kernel.strip()
    if module.release != kernel.split(" ", 1)[0]:
        why = f"built for kernel {module.release}, the image runs {theirs.split(' ', 1)[0]}"
    else:
        why = f"vermagic {mine!r} differs from the kernel's {theirs!r}"
    raise BadInput(f"{what} {module.path}: {why} (rebuild it against this kernel's headers)")
