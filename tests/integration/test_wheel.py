"""The wheel, as a user gets it: built by ``python -m build``, installed in a fresh venv,
used from another directory.

Issue 12: installed with pip, kswgdb only worked inside the source tree ("image
not found: kswtest (looked for .../site-packages/images/kswtest.toml)"). Here the
wheel must carry the image description and the test kernel, ``kswgdb demo`` must
catch scenario 3 from an unrelated directory, and a wheel without the prebuilt
kernel must build it from its packaged sources into the user cache on first use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import kswgdb
from kswgdb.image import IMAGES_DIR

#: Independent of the QEMU under test: `make test` runs it once, not per QEMU version.
pytestmark = [pytest.mark.integration, pytest.mark.one_qemu]

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    """The user's environment: no PYTHONPATH pointing back into the source tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def _run(argv: list[str], cwd: Path, timeout: float = 600, **env: str
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (and nothing else of ours); its directory."""
    if not (IMAGES_DIR / "kswtest.elf").is_file():
        pytest.fail("images/kswtest.elf is missing: run `make guest` first")
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    built = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=tmp)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheels = sorted(dist.glob("kswgdb-*.whl"))
    assert len(wheels) == 1 and sorted(dist.glob("kswgdb-*.tar.gz")), sorted(dist.iterdir())
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    assert made.returncode == 0, made.stderr
    pip = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                "--disable-pip-version-check", str(wheels[0])], cwd=tmp)
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


def test_the_wheel_carries_the_image_the_kernel_its_sources_and_a_licence(installed: Path
                                                                           ) -> None:
    (wheel,) = (installed.parent / "dist").glob("kswgdb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("kswgdb/_data/images/kswtest.toml", "kswgdb/_data/images/kswtest.elf",
                 "kswgdb/_data/guest/Makefile", "kswgdb/_data/guest/scenarios.c",
                 "kswgdb/_data/guest/tools/check_layout.py", "kswgdb/tui/app.tcss",
                 "kswgdb/watch/events.schema.json"):
        assert name in names, name
    meta = zipfile.ZipFile(wheel).read(f"kswgdb-{kswgdb.__version__}.dist-info/METADATA")
    text = meta.decode()
    assert "License-Expression: MIT" in text
    assert "Classifier: Topic :: Software Development :: Debuggers" in text
    assert "Requires-Dist: rich<16,>=13" in text


def test_installed_kswgdb_catches_the_demo_from_another_directory(installed: Path,
                                                                  tmp_path: Path) -> None:
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    exe = installed / "bin" / "kswgdb"
    version = _run([str(exe), "--version"], cwd=elsewhere)
    assert version.stdout.strip() == f"kswgdb {kswgdb.__version__}", version
    where = _run([str(installed / "bin" / "python"), "-c",
                  "import kswgdb.image as i; print(i.load(None).kernel)"], cwd=elsewhere)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(str(installed / "lib")), where.stdout
    assert "/_data/images/kswtest.elf" in where.stdout
    schema = _run([str(installed / "bin" / "python"), "-c",
                   "from kswgdb.watch.eventschema import event_types; print(*event_types())"],
                  cwd=elsewhere)       # the event-log schema, found as package data
    assert "start" in schema.stdout.split() and "end" in schema.stdout.split(), schema.stderr

    demo = _run([str(exe), "demo"], cwd=elsewhere, timeout=300)
    assert demo.returncode in (0, 1), demo.stderr[-3000:]
    assert "Caught stack corruption #1" in demo.stdout, demo.stdout[-3000:] + demo.stderr
    assert "s3_corrupt_write" in demo.stdout
    assert demo.stdout.strip().splitlines()[-1].strip() == "1 hit(s)", demo.stdout[-500:]
    (log,) = elsewhere.glob("kswgdb-*.jsonl")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    hits = [e for e in events if e.get("event") == "hit"]
    assert hits and hits[0]["writer"]["symbol"].startswith("s3_corrupt_write"), events[-3:]

    bad = _run([str(exe), "run", "--scenario", "99", "--watch", "fn=s3_victim fo=0x23"],
               cwd=elsewhere)
    assert bad.returncode == 2 and "has no such scenario" in bad.stderr, bad.stderr


def test_a_wheel_without_the_kernel_builds_it_into_the_user_cache(installed: Path,
                                                                  tmp_path: Path) -> None:
    """Simulates a wheel built where the kernel was not: the first use builds it, once."""
    site = next((installed / "lib").glob("python3*/site-packages"))
    elf = site / "kswgdb" / "_data" / "images" / "kswtest.elf"
    elf.unlink()
    cache = tmp_path / "cache"
    argv = [str(installed / "bin" / "kswgdb"), "boot", "--scenario", "3", "--accel", "tcg",
            "--timeout", "120"]
    boot = _run(argv, cwd=tmp_path, timeout=400, XDG_CACHE_HOME=str(cache))
    assert boot.returncode == 0, boot.stdout[-2000:] + boot.stderr[-2000:]
    assert "KSWTEST verdict scenario=3" in boot.stdout
    built = cache / "kswgdb" / f"kswtest-{kswgdb.__version__}" / "images" / "kswtest.elf"
    assert built.is_file()
    # The guest build is reproducible: the same bytes as the source tree's kernel.
    assert built.read_bytes() == (IMAGES_DIR / "kswtest.elf").read_bytes()
    stamp = built.stat().st_mtime_ns
    again = _run(argv, cwd=tmp_path, timeout=400, XDG_CACHE_HOME=str(cache))
    assert again.returncode == 0 and built.stat().st_mtime_ns == stamp   # not rebuilt
