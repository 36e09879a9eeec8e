"""The package layout holds: the policy stays free of QEMU and the stub, folders say
what they hold, and off-by-default experiments cost nothing when off."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import kswgdb

#: The packages made by splitting the old watch/ by job.
PACKAGES = ["watch", "run", "poll", "gdb", "emulate", "campaign"]


def test_the_watch_policy_imports_neither_qemu_nor_gdbstub():
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import kswgdb.watch as w\n"
        "for m in pkgutil.iter_modules(w.__path__):\n"
        "    importlib.import_module('kswgdb.watch.' + m.name)\n"
        "print(json.dumps(sorted(k for k in sys.modules\n"
        "                        if k.startswith(('kswgdb.qemu', 'kswgdb.gdbstub',\n"
        "                                         'kswgdb.run', 'kswgdb.poll')))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_docstring_maps_its_modules(package):
    module = __import__(f"kswgdb.{package}", fromlist=["_"])
    doc = module.__doc__ or ""
    names = [m.name for m in pkgutil.iter_modules(module.__path__)]
    missing = [n for n in names if f"`{n}`" not in doc]
    assert not missing, f"kswgdb.{package} docstring does not name {missing}"


def test_read_release_is_not_analysed_unless_switched_on(monkeypatch):
    from kswgdb.run.options import RunOptions
    from kswgdb.run.prepare import prepare
    from kswgdb.watch import resolve

    def analysed(*_a, **_k):
        raise AssertionError("read-release analysis ran while switched off")

    monkeypatch.setattr(resolve, "read_exits", analysed)
    plan = prepare(RunOptions(watches=["fn=s7_victim fo=0x14"], accel="tcg"))
    assert plan.specs[0].read_exits == ()
    with pytest.raises(AssertionError, match="switched off"):
        prepare(RunOptions(watches=["fn=s7_victim fo=0x14"], accel="tcg", release_by_read=True))


def test_the_package_is_importable_as_a_whole():
    assert kswgdb.__file__
