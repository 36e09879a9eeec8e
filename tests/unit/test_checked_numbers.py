"""Every number is checked before anything starts: one line on stderr, exit 2, no QEMU.

The table is issue 12's list of inputs that used to run (and exit 0, 1 or 3 after
a boot): each must now be refused by ``kswgdb.cli.main`` before a `Machine` is even
constructed, with a message that names the offending value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kswgdb import cli
from kswgdb.image import IMAGES_DIR
from kswgdb.qemu import accel as accel_mod
from kswgdb.qemu import machine as machine_mod

WATCH = ["--watch", "fn=s3_victim fo=0x23"]

CASES = [
    (["run", "--timeout", "-1", *WATCH], "--timeout: '-1': must be more than 0"),
    (["run", "--timeout", "0", *WATCH], "--timeout: '0': must be more than 0"),
    (["run", "--timeout", "nan", *WATCH], "'nan' is not a finite number of seconds"),
    (["run", "--timeout", "inf", *WATCH], "'inf' is not a finite number of seconds"),
    (["run", "--slots", "-3", *WATCH], "--slots: '-3': must be from 1 to 1024"),
    (["run", "--slots", "0", *WATCH], "--slots: '0': must be from 1 to 1024"),
    (["run", "--slots", "100000", *WATCH], "--slots: '100000': must be from 1 to 1024"),
    (["run", "--scenario", "99", *WATCH], "--scenario 99: image kswtest has no such scenario"),
    (["run", "--scenario", "-1", *WATCH], "--scenario: '-1': must not be negative"),
    (["boot", "--timeout", "-5"], "--timeout: '-5': must be more than 0"),
    (["boot", "--scenario", "99"], "--scenario 99: image kswtest has no such scenario"),
    (["tui", "--scenario", "99"], "--scenario 99: image kswtest has no such scenario"),
    (["tui", "--timeout", "-1"], "--timeout: '-1': must be 0 (never)"),
    (["tui", "--slots", "0"], "--slots: '0': must be from 1 to 1024"),
    (["run", "--poll", "pa=0x7ffffffff000 to=1"],
     "pa 0x7ffffffff000+8 is beyond guest memory (image kswtest has 64M of RAM"),
    (["run", "--hang-timeout", "nan", *WATCH], "seconds out of range: 'nan'"),
    (["run", "--watch", "fn=s3_victim fo=0x23 ph=yes"], "ph='yes' must be 0 or 1"),
    (["disasm", "s3_victim", "--var", "nosuch"],
     "--var nosuch: s3_victim has no local or parameter 'nosuch'"),
    (["run", "--accel", "kvm", *WATCH], "--accel kvm: no vmx/svm flag in /proc/cpuinfo"),
    (["boot", "--accel", "kvm"], "--accel kvm: no vmx/svm flag in /proc/cpuinfo"),
    (["run", "--log", "/nonexistent/dir/ev.jsonl", *WATCH], "no such directory /nonexistent/dir"),
    (["symbols", "--image", ""], "image: an empty name"),
]


@pytest.fixture(autouse=True)
def _nothing_may_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Machine constructed at all fails the test; KVM looks like this project's kvm_pvm."""
    if not (IMAGES_DIR / "kswtest.elf").is_file():
        pytest.fail("images/kswtest.elf is missing: run `make guest` first")

    def no_machine(*args: object, **kw: object) -> None:
        raise AssertionError("a Machine was constructed for bad input")

    monkeypatch.setattr(machine_mod.Machine, "__init__", no_machine)
    monkeypatch.setattr(accel_mod, "read_host_facts", lambda: accel_mod.HostFacts(
        kvm_exists=True, kvm_accessible=True, cpu_flags=frozenset({"fpu", "hypervisor"}),
        kvm_modules=("kvm", "kvm_pvm")))


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    status = cli.main(argv)
    out, err = capsys.readouterr()
    assert status == 2, (argv, out, err)
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("kswgdb: error: ")
    return lines[0]


@pytest.mark.parametrize(("argv", "fragment"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_number_is_one_line_exit_2(argv: list[str], fragment: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    line = _refused(argv, capsys)
    assert fragment in line, line


@pytest.mark.parametrize("memory", ["64Q", "0", "-64M", "64 M B x", "2000T"])
def test_unparsable_image_memory(memory: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    toml = (IMAGES_DIR / "kswtest.toml").read_text()
    toml = toml.replace('memory = "64M"', f'memory = "{memory}"')
    toml = toml.replace('"kswtest.elf"', f'"{IMAGES_DIR / "kswtest.elf"}"')
    assert f'memory = "{memory}"' in toml
    desc = tmp_path / "bad.toml"
    desc.write_text(toml)
    line = _refused(["run", str(desc), *WATCH], capsys)
    assert f"image bad: memory = '{memory}' is not a size from 1M to 1T" in line, line


def test_good_numbers_pass_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    """The same options with sane values get as far as starting a guest (and no further)."""
    with pytest.raises(AssertionError, match="a Machine was constructed"):
        cli.main(["boot", "--scenario", "3", "--timeout", "0.5", "--accel", "tcg"])
    capsys.readouterr()
