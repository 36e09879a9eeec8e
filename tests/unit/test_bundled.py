"""Where the bundled image is found: source tree, installed package data, user cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kswgdb import bundled
from kswgdb.errors import BadInput
from kswgdb.image import IMAGES_DIR


def _package_data(tmp_path: Path, with_kernel: bool) -> Path:
    data = tmp_path / "_data"
    (data / "images").mkdir(parents=True)
    shutil.copy(IMAGES_DIR / "kswtest.toml", data / "images")
    if with_kernel:
        (data / "images" / "kswtest.elf").write_bytes(b"\x7fELF")
    (data / "guest").mkdir()
    (data / "guest" / "Makefile").write_text("all:\n\tfalse\n")
    return data


def test_a_source_checkout_uses_its_images_directory() -> None:
    assert bundled.find_image("kswtest") == IMAGES_DIR / "kswtest.toml"
    assert bundled.find_image("no-such-image") is None


def test_installed_package_data_with_the_kernel_is_used_as_is(tmp_path: Path) -> None:
    data = _package_data(tmp_path, with_kernel=True)
    found = bundled.find_image("kswtest", data_dir=data, cache=tmp_path / "cache")
    assert found == data / "images" / "kswtest.toml"
    assert not (tmp_path / "cache").exists()


def test_without_gcc_the_first_use_names_what_to_install(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    data = _package_data(tmp_path, with_kernel=False)
    monkeypatch.setattr(bundled.shutil, "which", lambda tool: None if tool == "gcc" else "/x")
    with pytest.raises(BadInput, match=r"needs gcc, not installed \(Debian: apt-get install gcc\)"):
        bundled.find_image("kswtest", data_dir=data, cache=tmp_path / "cache")


def test_a_failed_build_says_so_in_one_line(tmp_path: Path) -> None:
    data = _package_data(tmp_path, with_kernel=False)
    with pytest.raises(Exception, match="building the test kernel in .* failed") as info:
        bundled.find_image("kswtest", data_dir=data, cache=tmp_path / "cache")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "cache" / f"kswtest-{bundled.__version__}" / "images"
                / "kswtest.toml").exists()      # an unfinished build is never taken as done
