"""`--engine auto|gdbstub|plugin`: which engine a run gets, and why (no QEMU started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kswgdb.errors import BadInput
from kswgdb.plugin import build as build_mod
from kswgdb.plugin import choice
from kswgdb.qemu import binary
from kswgdb.qemu.fetch import STAMP_FORMAT, Qemu10
from kswgdb.qemu.version import QemuVersion
from tests.unit.test_plugin_engine import spec


def fake_qemu(monkeypatch, version: QemuVersion, plugins: bool = True) -> None:
    qemu = binary.QemuBinary("/opt/qemu", version, f"QEMU emulator version {version}", ())
    monkeypatch.setattr(binary, "selected", lambda: qemu)
    monkeypatch.setattr(choice, "_has_plugins", lambda _path: plugins)


def fake_cache(tmp_path: Path, monkeypatch, version: str = "1:10.0.2+ds-2", header=True,
               built=False) -> Qemu10:
    cache = Qemu10(tmp_path)
    (tmp_path / "bin").mkdir(parents=True)
    cache.binary.write_text("")
    cache.stamp.write_text(f"{STAMP_FORMAT}\n{version}\n")
    if header:
        for directory, name in zip([cache.include, *cache.glib_includes()],
                                   ("qemu-plugin.h", "glib.h", "glibconfig.h"), strict=True):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text("")
    monkeypatch.setattr(choice, "located", lambda: cache)
    monkeypatch.delenv(build_mod.PLUGIN_DIR_VAR, raising=False)
    if built:
        out = build_mod.plugin_path(cache)
        out.parent.mkdir(parents=True)
        out.write_text("")
    return cache


def test_qemu_7_2_gets_the_gdbstub_engine_and_says_why(monkeypatch):
    fake_qemu(monkeypatch, QemuVersion(7, 2, 22))
    got = choice.choose("auto", choice.RunShape([spec()]))
    assert got.engine == "gdbstub"
    assert "QEMU 7.2.22 has no plugin API 4" in got.reason
    with pytest.raises(BadInput, match="--engine plugin: QEMU 7.2.22 has no plugin API 4"):
        choice.choose("plugin", choice.RunShape([spec()]))


def test_qemu_10_with_its_header_gets_the_plugin(tmp_path, monkeypatch):
    fake_qemu(monkeypatch, QemuVersion(10, 0, 2))
    cache = fake_cache(tmp_path, monkeypatch)
    got = choice.choose(None, choice.RunShape([spec()]))
    assert (got.engine, got.qemu10) == ("plugin", cache)
    assert got.describe() == "engine: plugin (QEMU 10.0.2 with TCG plugins)"
    assert choice.choose("gdbstub", choice.RunShape([spec()])).engine == "gdbstub"


def test_every_missing_piece_of_the_plugin_is_named(tmp_path, monkeypatch):
    fake_qemu(monkeypatch, QemuVersion(10, 0, 2), plugins=False)
    assert "built without TCG plugin support" in choice.choose("auto", choice.RunShape(
        [spec()])).reason
    fake_qemu(monkeypatch, QemuVersion(10, 1, 0))
    fake_cache(tmp_path / "a", monkeypatch)
    assert "no qemu-plugin.h for QEMU 10.1.0" in choice.choose("auto", choice.RunShape(
        [spec()])).reason
    fake_qemu(monkeypatch, QemuVersion(10, 0, 2))
    fake_cache(tmp_path / "b", monkeypatch, header=False)
    assert "qemu-plugin.h is not fetched" in choice.choose("auto", choice.RunShape(
        [spec()])).reason
    monkeypatch.setattr(choice.shutil, "which", lambda _name: None)
    fake_cache(tmp_path / "c", monkeypatch)
    assert "gcc is not installed" in choice.choose("auto", choice.RunShape([spec()])).reason
    fake_cache(tmp_path / "d", monkeypatch, built=True)    # already built: no gcc needed
    assert choice.choose("auto", choice.RunShape([spec()])).engine == "plugin"


@pytest.mark.parametrize(("shape", "why"), [
    (dict(interactive=True), "the TUI adds and removes watches"),
    (dict(attached=True), "an attached QEMU was started without"),
    (dict(specs=[]), "no function watch"),
    (dict(polls=1), "--poll"),
    (dict(gdb_listen=True), "--gdb-listen"),
    (dict(backtrace="gdb"), "--backtrace gdb"),
    (dict(accel="kvm"), "TCG only"),
    (dict(specs=[spec(exits=())]), "release points are unknown"),
    (dict(specs=[spec()] * 17), "at most 16 watches"),
])
def test_watch_sets_the_plugin_cannot_take_fall_back_with_the_reason(monkeypatch, shape, why):
    fake_qemu(monkeypatch, QemuVersion(10, 0, 2))
    got = choice.choose("auto", choice.RunShape(**{"specs": [spec()], **shape}))
    assert got.engine == "gdbstub" and why in got.reason
    with pytest.raises(BadInput, match=f"--engine plugin: .*{why}"):
        choice.choose("plugin", choice.RunShape(**{"specs": [spec()], **shape}))


def test_module_watches_go_to_the_plugin_too(tmp_path, monkeypatch):
    fake_qemu(monkeypatch, QemuVersion(10, 0, 2))
    fake_cache(tmp_path, monkeypatch)
    assert choice.choose("auto", choice.RunShape([], module_watches=1)).engine == "plugin"


def test_the_environment_names_the_default_engine(monkeypatch):
    monkeypatch.setenv(choice.ENV_VAR, "gdbstub")
    assert choice.requested(None) == "gdbstub"
    assert choice.requested("plugin") == "plugin"
    monkeypatch.setenv(choice.ENV_VAR, "fast")
    with pytest.raises(BadInput, match="KSWGDB_ENGINE 'fast'"):
        choice.requested(None)
