"""Where the bundled images are: a source checkout, an installed wheel, or the user cache.

In a source checkout the image descriptions sit in ``images/`` next to the package
and ``make guest`` builds the test kernel there. An installed wheel has no such
directory, so the build copies ``images/kswtest.toml``, the prebuilt
``kswtest.elf`` and the guest sources into the package as ``kswgdb/_data/``
(``setup.py``). A wheel built where the kernel had not been built carries only the
sources: the first use builds the kernel from them into the user cache
(``$XDG_CACHE_HOME/kswgdb/kswtest-VERSION/``), and says which tool is missing if
gcc or make is not there. Nothing here is a guess at a path: each place is tried
in that order and the first that holds the description wins.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from kswgdb import __version__
from kswgdb.errors import BadInput, InfraError

#: ``images/`` of a source checkout (the package's parent directory).
SOURCE_IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"
#: What the wheel carries: ``_data/images`` (descriptions, prebuilt kernel) and ``_data/guest``.
PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "_data"
#: The image a wheel can rebuild from its packaged sources.
TEST_KERNEL = "kswtest"
#: Tools the guest build runs (guest/Makefile), named when missing.
BUILD_TOOLS = ("gcc", "make")
BUILD_TIMEOUT = 300.0


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/kswgdb``, by default under ~/.cache (as the accelerator cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kswgdb"


def image_candidates(name: str) -> list[Path]:
    """Where a bundled image description called ``name`` may be, in the order tried."""
    return [SOURCE_IMAGES_DIR / f"{name}.toml", PACKAGE_DATA_DIR / "images" / f"{name}.toml"]


def find_image(name: str, data_dir: Path = PACKAGE_DATA_DIR,
               cache: Path | None = None) -> Path | None:
    """The description of bundled image ``name``, building the test kernel if needed.

    A source checkout's ``images/`` wins (``make guest`` keeps it current). In a wheel
    the packaged description is used when its kernel is there; otherwise, for the test
    kernel, the packaged guest sources are built into the user cache once.
    """
    source = SOURCE_IMAGES_DIR / f"{name}.toml"
    if source.is_file() and data_dir == PACKAGE_DATA_DIR:
        return source
    packaged = data_dir / "images" / f"{name}.toml"
    if not packaged.is_file():
        return None
    if name != TEST_KERNEL or (packaged.parent / f"{name}.elf").is_file():
        return packaged
    return build_test_kernel(data_dir, cache or cache_root())


def build_test_kernel(data_dir: Path, cache: Path) -> Path:
    """Build the test kernel from the packaged sources into ``cache``; return its description.

    The cache directory mirrors the source tree (``guest/`` and ``images/``), so the
    guest Makefile's own output path applies. A lock keeps two first runs from
    building over each other; a finished build is never redone.
    """
    root = cache / f"{TEST_KERNEL}-{__version__}"
    toml = root / "images" / f"{TEST_KERNEL}.toml"
    elf = root / "images" / f"{TEST_KERNEL}.elf"
    if toml.is_file() and elf.is_file():
        return toml
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        raise BadInput(f"the test kernel is built from source on first use and that needs "
                       f"{' and '.join(missing)}, not installed (Debian: apt-get install "
                       f"{' '.join(missing)})")
    sources = data_dir / "guest"
    if not (sources / "Makefile").is_file():
        raise BadInput(f"the test kernel is not in this installation and its sources are "
                       f"missing too ({sources}): reinstall kswgdb")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if toml.is_file() and elf.is_file():      # built by another run while we waited
            return toml
        _build_into(root, sources, data_dir / "images" / f"{TEST_KERNEL}.toml")
    return toml


def _build_into(root: Path, sources: Path, description: Path) -> None:
    guest = root / "guest"
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(guest)
    shutil.copytree(sources, guest)
    (root / "images").mkdir(exist_ok=True)
    try:
        done = subprocess.run(["make", "-C", str(guest)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise InfraError(f"building the test kernel in {guest} took over "
                         f"{BUILD_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise InfraError(f"building the test kernel in {guest} failed (make exit "
                         f"{done.returncode}): {tail}")
    # The description goes last: its presence next to the kernel marks a finished build.
    shutil.copyfile(description, root / "images" / description.name)
