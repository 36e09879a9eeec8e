"""Shared fixtures of the integration suite: machines that are always stopped.

* ``machine``: a factory, ``machine(image=None, **Machine_kwargs) -> Machine``,
  launched (pass ``launch=False`` to get it unlaunched). The image defaults to the
  test kernel (images/kswtest.toml); the accelerator to ``$KSWGDB_TEST_ACCEL`` or
  ``tcg``. Every machine is closed at teardown, and the fixture asserts its QEMU
  process is gone — a test cannot leak a QEMU even when it fails.
* ``kswtest_image``: the test kernel's `Image` (fails if it has not been built).
* ``pvh_image``: a factory turning a `kswgdb.qemu.pvh` program into an `Image`.
* ``accel_cache``: an `AccelCache` in a temporary file, so tests never read or
  write the user's ~/.cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kswgdb.image import IMAGES_DIR, Image
from kswgdb.image import load as load_image
from kswgdb.qemu import pvh
from kswgdb.qemu.accel import AccelCache
from kswgdb.qemu.machine import Machine
from tests.integration.helpers import MachineFactory

KSWTEST_TOML = IMAGES_DIR / "kswtest.toml"
TEST_ACCEL = os.environ.get("KSWGDB_TEST_ACCEL", "tcg")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration boots QEMU: mark it so ``-m 'not integration'`` works."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kswtest_image() -> Image:
    """The test kernel, as described by images/kswtest.toml."""
    if not KSWTEST_TOML.is_file() or not (IMAGES_DIR / "kswtest.elf").is_file():
        # A failure, not a skip: a missing test kernel must never turn the suite green.
        pytest.fail(f"{KSWTEST_TOML} or its kernel missing: build it with `make guest`")
    return load_image(KSWTEST_TOML)


@pytest.fixture
def pvh_image(tmp_path: Path) -> Callable[..., Image]:
    """``pvh_image(program, **image_kw)``: write a pvh program and describe it as an Image."""
    counter = iter(range(1000))

    def factory(program: pvh.Program, **kw: Any) -> Image:
        return program.image(tmp_path / f"pvh-{next(counter)}.elf", **kw)

    return factory


@pytest.fixture
def accel_cache(tmp_path: Path) -> AccelCache:
    return AccelCache(tmp_path / "accel.json")


@pytest.fixture
def machine(request: pytest.FixtureRequest) -> Iterator[MachineFactory]:
    """Factory of launched machines, all closed (and checked gone) at teardown."""
    created: list[Machine] = []

    def factory(image: Image | str | Path | None = None, *, launch: bool = True,
                **kw: Any) -> Machine:
        if image is None:
            image = request.getfixturevalue("kswtest_image")
        kw.setdefault("accel", TEST_ACCEL)
        m = Machine(image, **kw)
        created.append(m)
        if launch:
            m.launch()
        return m

    yield factory
    pids = [m.pid for m in created if m.pid is not None]
    for m in created:
        m.close()
    leaked = [pid for pid in pids if _alive(pid)]
    assert not leaked, f"QEMU still running after close: {leaked}"


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
