"""What the user adds to an image for one run: ``--module``, ``--drive``, ``--qemu-arg``.

`check_additions` makes every check before boot (one `BadInput` line, exit 2):
each module is a kernel module built for the image's kernel (vermagic, against
the vmlinux's own string), for a Linux image that has an initramfs to carry it;
each drive exists, is readable and has a format QEMU knows; no QEMU argument
takes over kswgdb's own wiring. `Additions.machine_kwargs` is what
`kswgdb.qemu.machine.Machine` takes for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kswgdb.errors import BadInput
from kswgdb.image import Image
from kswgdb.qemu.drives import Drive, check_drives
from kswgdb.qemu.userargs import check_qemu_args
from kswgdb.symbols.modinfo import ModuleInfo, check_vermagic, kernel_vermagic, read_module
from kswgdb.watch.modules import module_files


@dataclass(frozen=True)
class Additions:
    """The checked ``--module``, ``--drive`` and ``--qemu-arg`` of one run."""

    modules: tuple[ModuleInfo, ...] = ()
    drives: tuple[Drive, ...] = ()
    qemu_args: tuple[str, ...] = ()
    #: Module name -> .ko of every module a watch may name (the image's and the user's).
    module_files: dict[str, Path] = field(default_factory=dict)

    def machine_kwargs(self) -> dict[str, Any]:
        """``Machine(...)`` keyword arguments for these additions (empty when none)."""
        out: dict[str, Any] = {}
        if self.modules:
            out["modules"] = tuple(m.path for m in self.modules)
        if self.drives:
            out["drives"] = self.drives
        if self.qemu_args:
            out["extra_args"] = self.qemu_args
        return out

    def log_fields(self) -> dict[str, Any]:
        """The ``start`` event's fields for these additions (none when there are none):
        ``modules`` [{name, path, vermagic}], ``drives`` [{path, mode, format}],
        ``qemu_args`` [str]."""
        out: dict[str, Any] = {}
        if self.modules:
            out["modules"] = [{"name": m.name, "path": str(m.path), "vermagic": m.vermagic}
                              for m in self.modules]
        if self.drives:
            out["drives"] = [{"path": str(d.path), "mode": d.mode, "format": d.format}
                             for d in self.drives]
        if self.qemu_args:
            out["qemu_args"] = list(self.qemu_args)
        return out

    def describe(self) -> list[str]:
        """Status lines: what the guest gets besides the image."""
        lines = [f"module {m.name}: {m.path} (loaded by /init before the command)"
                 for m in self.modules]
        lines += [f"drive vd{chr(ord('a') + i)}: {d.describe()}"
                  for i, d in enumerate(self.drives)]
        if self.qemu_args:
            lines.append("extra QEMU arguments: " + " ".join(self.qemu_args))
        return lines


def check_modules(paths: list[str], image: Image, symtab: Any) -> tuple[ModuleInfo, ...]:
    """Each ``--module``: a module for this image's kernel, named once; in load order."""
    if not paths:
        return ()
    if image.guest != "linux" or image.initrd is None:
        raise BadInput(f"--module: image {image.name} is not a Linux image with an "
                       "initramfs (guest = \"linux\" and initrd = ...): nothing would load it")
    kernel = kernel_vermagic(symtab)
    own = module_files(image.modules_dir)
    modules: list[ModuleInfo] = []
    for text in paths:
        info = read_module(Path(text))
        check_vermagic(info, kernel)
        if info.name in own:
            raise BadInput(f"--module {text}: the image already loads a module named "
                           f"{info.name} ({own[info.name]})")
        if any(m.name == info.name for m in modules):
            raise BadInput(f"--module {text}: a module named {info.name} is given twice")
        modules.append(info)
    return load_order(modules)


def load_order(modules: list[ModuleInfo]) -> tuple[ModuleInfo, ...]:
    """The modules in an order insmod accepts: each after the given modules it depends on
    (its ``.modinfo`` ``depends``), else in command-line order. A cycle keeps the rest in
    command-line order (insmod then says which symbol is missing)."""
    given = {m.name for m in modules}
    done: list[ModuleInfo] = []
    left = list(modules)
    while left:
        placed = {m.name for m in done}
        ready = next((m for m in left
                      if all(d in placed or d not in given for d in m.depends)), left[0])
        done.append(ready)
        left.remove(ready)
    return tuple(done)


def check_additions(modules: list[str], drives: list[str], qemu_args: list[str],
                    image: Image, symtab: Any, qemu_binary: str | None = None) -> Additions:
    """Every addition checked, in the order the user is most likely to get wrong."""
    infos = check_modules(modules, image, symtab)
    args = check_qemu_args(qemu_args)
    checked = check_drives(drives, qemu_binary)
    files = module_files(image.modules_dir, {m.name: m.path for m in infos})
    return Additions(modules=infos, drives=tuple(checked), qemu_args=args, module_files=files)
