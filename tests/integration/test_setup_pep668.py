"""``make setup`` on a system Python that is externally managed (PEP 668), as Debian 12's is.

Issue 12: ``make setup`` ran ``pip install`` into the system Python and stopped with
``externally-managed-environment`` on a stock Debian 12 (it only worked here because
``python3`` was not the system one), and never installed gcc or make. This runs the
real ``make setup`` on a copy of the source tree with Debian's own ``/usr/bin/python3``
(carrying its ``EXTERNALLY-MANAGED`` marker) and a PATH on which QEMU, qemu-img, gdb and
gcc are missing, so the apt step must ask for them (apt-get is a recorder here: the real
packages are installed already and the dpkg lock is shared).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: Independent of the QEMU under test: `make test` runs it once, not per QEMU version.
pytestmark = [pytest.mark.integration, pytest.mark.one_qemu]

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
#: What the Makefile's recipes run; everything else (qemu, gdb, gcc) is left off PATH.
TOOLS = ("make", "sh", "touch", "env", "rm", "mkdir", "cat", "dirname")


def _marked(python: Path) -> Path:
    stdlib = subprocess.run([str(python), "-c", "import sysconfig; "
                             "print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    return Path(stdlib) / "EXTERNALLY-MANAGED"


def _copy_tree(dest: Path) -> None:
    """What a fresh clone has: tracked files and new ones not ignored (no venv, no builds)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


@pytest.fixture(scope="module")
def marked_python() -> Path:
    if not SYSTEM_PYTHON.is_file() or not _marked(SYSTEM_PYTHON).is_file():
        pytest.fail(f"{SYSTEM_PYTHON} is not an externally managed Debian Python: this test "
                    "proves `make setup` on one (Debian 12's python3)")
    # The precondition: this interpreter really refuses a plain pip install.
    refused = subprocess.run([str(SYSTEM_PYTHON), "-m", "pip", "install", "--dry-run",
                              "--no-deps", "--no-index", "pexpect"],
                             capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "externally-managed-environment" in refused.stderr, \
        refused.stderr
    return SYSTEM_PYTHON


def test_make_setup_installs_into_a_project_venv(marked_python: Path, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    _copy_tree(clone)
    assert not (clone / ".venv").exists()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    apt_log = tmp_path / "apt.log"
    fake_apt = tmp_path / "apt-get"
    fake_apt.write_text(f'#!/bin/sh\necho "$*" >> {apt_log}\n')
    fake_apt.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL", "MFLAGS",
                        "VENV", "PYTHON", "SYSTEM_PYTHON")}   # an outer make's variables
    env["PATH"] = str(bin_dir)
    argv = ["make", "-C", str(clone), "setup", f"SYSTEM_PYTHON={marked_python}",
            f"APT_GET={fake_apt}"]
    setup = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900,
                           check=False)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    assert "externally-managed" not in setup.stderr

    # apt-get was asked for exactly what is missing from this PATH.
    calls = apt_log.read_text().splitlines()
    assert calls[0] == "update -qq", calls
    assert calls[1].split()[:3] == ["install", "-y", "-qq"], calls
    assert calls[1].split()[3:] == ["qemu-system-x86", "gdb", "gcc", "qemu-utils", "crash"], calls

    # kswgdb and its dependencies are in the project venv, made from the system Python...
    venv_python = clone / ".venv" / "bin" / "python"
    probe = subprocess.run([str(venv_python), "-c", "import sys, kswgdb, rich, unicorn; "
                            "print(sys.base_prefix); print(kswgdb.__file__)"],
                           capture_output=True, text=True, check=False, cwd=tmp_path,
                           env=env)
    assert probe.returncode == 0, probe.stderr
    base, where = probe.stdout.split()
    assert base == "/usr" and where == str(clone / "kswgdb" / "__init__.py"), probe.stdout
    # ...and nothing went into the system Python.
    system = subprocess.run([str(marked_python), "-c", "import kswgdb"], capture_output=True,
                            text=True, check=False, cwd=tmp_path,
                            env={k: v for k, v in env.items() if k != "PYTHONPATH"})
    assert system.returncode != 0 and "No module named 'kswgdb'" in system.stderr

    # A second run does nothing; demo and test use the venv's interpreter.
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60,
                           check=False)
    assert again.returncode == 0 and "pip" not in again.stdout, again.stdout
    assert len(apt_log.read_text().splitlines()) == 2
    plan = subprocess.run(["make", "-C", str(clone), "-n", "demo", "test"], env=env,
                          capture_output=True, text=True, timeout=60, check=False).stdout
    assert ".venv/bin/python -m kswgdb demo" in plan, plan
    assert ".venv/bin/python -m pytest" in plan, plan
