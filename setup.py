"""Puts the bundled image and the test kernel's sources into the wheel (``kswgdb/_data``).

Everything else about the package is in pyproject.toml. The image descriptions and
the guest sources live at the top of the repository (``images/``, ``guest/``), where
``make guest`` and the tests use them; a wheel has no such directory, so the build
copies what an installed kswgdb needs under the package (`kswgdb.bundled` finds it):

- ``images/kswtest.toml`` and, when ``make guest`` has built it, ``images/kswtest.elf``;
- the guest sources, from which the first use builds the kernel into the user cache
  when the wheel was made without it.

An editable install needs none of this: the package sits in the source tree.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
IMAGE_FILES = ("kswtest.toml", "kswtest.elf")
GUEST_PATTERNS = ("*.c", "*.h", "*.S", "*.ld", "Makefile", "README.md", "tools/*.py")


class BuildWithImages(build_py):
    """build_py, plus the bundled image and guest sources as package data."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        data = Path(self.build_lib) / "kswgdb" / "_data"
        for name in IMAGE_FILES:
            src = ROOT / "images" / name
            if src.is_file():
                (data / "images").mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, data / "images" / name)
        for pattern in GUEST_PATTERNS:
            for src in sorted((ROOT / "guest").glob(pattern)):
                dest = data / "guest" / src.relative_to(ROOT / "guest")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)


setup(cmdclass={"build_py": BuildWithImages})
