"""QEMU 10's fetch (kswgdb.qemu.fetch) without the network: apt's answers are faked."""

from __future__ import annotations

import pytest

from kswgdb.qemu import fetch as qf

MADISON = """\
qemu-system-x86 | 1:7.2+dfsg-7+deb12u13 | http://deb.debian.org/debian bookworm/main amd64 Packages
qemu-system-x86 | {bpo} | http://deb.debian.org/debian bookworm-backports/main amd64 Packages
"""

BPO = "Debian Backports:bookworm-backports"
PLAN = f"""\
NOTE: This is only a simulation!
Inst qemu-system-common [1:7.2+dfsg-7+deb12u13] (1:10.0.2+ds-2+deb13u1~bpo12+1 {BPO} [amd64])
Inst seabios [1.16.2-1] (1.16.3-2~bpo12+1 Debian Backports:bookworm-backports [all])
Inst qemu-system-x86 (1:10.0.2+ds-2+deb13u1~bpo12+1 Debian Backports:bookworm-backports [amd64])
Conf qemu-system-x86 (1:10.0.2+ds-2+deb13u1~bpo12+1 Debian Backports:bookworm-backports [amd64])
"""


class FakeApt:
    """Answers `apt-cache madison` and `apt-get -s install` from fixed text."""

    def __init__(self, madison: str = "", plan: str = "") -> None:
        self.madison, self.plan = madison, plan

    def cache(self, *args: str) -> str:
        assert args[0] == "madison"
        return self.madison

    def get(self, *args: str, **_: object) -> str:
        assert args[:2] == ("-s", "install")
        return self.plan

    def updated(self) -> FakeApt:
        return self


def test_the_pinned_version_is_taken_when_backports_has_it():
    assert qf.choose_version(FakeApt(MADISON.format(bpo=qf.PINNED))) == qf.PINNED


def test_a_newer_10_0_replaces_a_vanished_pin_and_says_so(capsys):
    newer = "1:10.0.5+ds-1~bpo12+1"
    assert qf.choose_version(FakeApt(MADISON.format(bpo=newer))) == newer
    assert "is gone from bookworm-backports" in capsys.readouterr().err


def test_no_10_0_in_backports_is_an_error_naming_what_is_there():
    with pytest.raises(qf.FetchError, match="1:11.0.0"):
        qf.choose_version(FakeApt(MADISON.format(bpo="1:11.0.0+ds-1~bpo12+1")))


def test_the_resolvers_plan_names_what_to_download():
    wanted = qf.packages_to_fetch(FakeApt(plan=PLAN), qf.PINNED)
    assert wanted == {"qemu-system-common": qf.PINNED, "seabios": "1.16.3-2~bpo12+1",
                      "qemu-system-x86": qf.PINNED}


def test_a_plan_without_the_version_asked_is_refused():
    with pytest.raises(qf.FetchError, match="does not install"):
        qf.packages_to_fetch(FakeApt(plan=PLAN), "1:10.0.5+ds-1~bpo12+1")


def test_versions_map_to_the_orig_tarball():
    assert qf.upstream_of(qf.PINNED) == "10.0.2+ds"


def test_only_debians_own_sources_are_copied(tmp_path):
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        f"Components: main\nSigned-By: {qf.KEYRING}\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        f"Components: main\nSigned-By: {qf.KEYRING}\n")
    (tmp_path / "vendor.sources").write_text(
        "Types: deb\nURIs: ar+https://vendor.example/apt\nSuites: stable\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/vendor.gpg\n")
    entries = qf.debian_sources(tmp_path)
    assert [e.split(maxsplit=2)[2] for e in entries] == [
        "http://mirror.example/debian bookworm main",
        "http://mirror.example/debian bookworm-updates main",
        "http://mirror.example/debian-security bookworm-security main"]
    assert qf.mirror_of(entries) == "http://mirror.example/debian"


def test_private_apt_adds_backports_from_the_systems_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("KSWGDB_DEBIAN_MIRROR", raising=False)
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
        f"Components: main\nSigned-By: {qf.KEYRING}\n")
    apt = qf.PrivateApt(tmp_path / "apt", parts=parts)
    text = apt.sources.read_text()
    assert "http://mirror.example/debian bookworm main" in text
    assert "deb-src [signed-by=" in text and "mirror.example/debian bookworm-backports" in text
    opts = apt.options()
    assert f"Dir::State={tmp_path / 'apt'}" in opts and "Debug::NoLocking=1" in opts


def test_the_wrapper_puts_qemus_own_firmware_and_libraries_first(tmp_path):
    root = tmp_path / "root"
    for d in ("usr/share/qemu", "usr/share/seabios", "usr/lib/x86_64-linux-gnu"):
        (root / d).mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/libslirp.so.0").write_text("")
    wrapper = qf.write_wrapper(tmp_path / "bin" / "qemu-system-x86_64", root)
    text = wrapper.read_text()
    assert wrapper.stat().st_mode & 0o111
    assert f"-L {root}/usr/share/qemu -L {root}/usr/share/seabios" in text
    assert "ipxe" not in text                             # absent directories are left out
    assert f"LD_LIBRARY_PATH={root}/usr/lib/x86_64-linux-gnu" in text
    assert text.splitlines()[-1].startswith(f"exec {root}/usr/bin/qemu-system-x86_64 ")


def test_the_cache_can_be_pointed_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setenv("KSWGDB_QEMU10_DIR", str(tmp_path))
    got = qf.located()
    assert got.binary == tmp_path / "bin/qemu-system-x86_64"
    assert got.header == tmp_path / "include/qemu-plugin.h"
    assert not got.ready() and not got.headers_ready()


def test_the_checkouts_cache_is_build_qemu10(monkeypatch):
    monkeypatch.delenv("KSWGDB_QEMU10_DIR", raising=False)
    assert qf.cache_dir() == qf.CHECKOUT / "build" / "qemu10"


def ready_cache(tmp_path, stamp: str) -> qf.Qemu10:
    got = qf.Qemu10(tmp_path)
    got.binary.parent.mkdir(parents=True)
    got.binary.write_text("#!/bin/sh\n")
    got.stamp.write_text(stamp)
    return got


def test_a_stamped_cache_is_only_read(tmp_path, monkeypatch):
    got = ready_cache(tmp_path, f"{qf.STAMP_FORMAT}\n{qf.PINNED}\n")

    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("a complete cache must not reach apt")

    monkeypatch.setattr(qf, "PrivateApt", no_network)
    assert qf.fetch(tmp_path) == got
    assert got.version() == qf.PINNED


def test_headers_are_fetched_only_when_asked(tmp_path, monkeypatch):
    got = ready_cache(tmp_path, f"{qf.STAMP_FORMAT}\n{qf.PINNED}\n")
    asked: list[str] = []
    monkeypatch.setattr(qf, "PrivateApt", lambda *a, **k: FakeApt())
    monkeypatch.setattr(qf, "fetch_plugin_headers", lambda g, apt, v: asked.append(v))
    qf.fetch(tmp_path)
    assert asked == []
    with pytest.raises(qf.FetchError, match="header is missing"):
        qf.fetch(tmp_path, plugin_headers=True)
    assert asked == [qf.PINNED]
    assert got.ready()


@pytest.mark.parametrize("stamp", ["", "kswgdb-qemu10 0\n1:10.0.2\n", f"{qf.STAMP_FORMAT}\n"])
def test_an_old_or_partial_stamp_means_fetch_again(tmp_path, stamp):
    assert not ready_cache(tmp_path, stamp).ready()


GLIB_MADISON = """\
libglib2.0-dev | 2.74.6-2+deb12u9 | http://deb.debian.org/debian bookworm/main amd64 Packages
libglib2.0-dev | 2.74.6-2+deb12u2 | http://sec.example/ bookworm-security/main amd64 Packages
   glib2.0 | 2.74.6-2+deb12u6 | http://deb.debian.org/debian bookworm-backports/main Sources
"""


def test_glib_headers_follow_the_installed_glib():
    assert qf.glib_dev_version(FakeApt(GLIB_MADISON), "2.74.6-2+deb12u2") == "2.74.6-2+deb12u2"


def test_a_superseded_glib_takes_the_newest_of_the_same_upstream(capsys):
    assert qf.glib_dev_version(FakeApt(GLIB_MADISON), "2.74.6-2+deb12u8") == "2.74.6-2+deb12u9"
    assert "is gone from the archive" in capsys.readouterr().err


def test_no_glib_of_the_same_upstream_is_an_error():
    with pytest.raises(qf.FetchError, match="2.74.6-2"):
        qf.glib_dev_version(FakeApt(GLIB_MADISON), "2.80.0-6")
