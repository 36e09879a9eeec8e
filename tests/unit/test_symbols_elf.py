"""The ELF symbol table: checked against binutils' view of the same file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kswgdb.errors import BadInput
from kswgdb.symbols import elf
from kswgdb.symbols.elf import Symbol, Symbolized, SymbolTable
from kswgdb.watch.config import parse_watch
from tests.fixtures.build import binary


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KSWGDB_CACHE_DIR", str(tmp_path / "cache"))


def _nm(path: Path) -> dict[str, tuple[int, int]]:
    out = subprocess.run(["nm", "-S", str(path)], capture_output=True, text=True, check=True)
    result = {}
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4:
            result[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
    return result


@pytest.mark.parametrize("flavour", ["global", "gs"])
def test_functions_and_objects_match_nm(flavour: str) -> None:
    path = binary(flavour)
    table = SymbolTable.load(path)
    nm = _nm(path)
    for name in ["recurse", "array32", "canary_victim", "no_canary", "kmain", "publish"]:
        sym = table.function(name)
        assert (sym.addr, sym.size) == nm[name]
        assert sym.kind == "func" and sym.bind == "global"
    for name in ["percpu_area", "init_task"]:
        sym = table.lookup(name, "object")
        assert (sym.addr, sym.size) == nm[name]
    if flavour == "global":
        assert table.address_of("__stack_chk_guard") == nm["__stack_chk_guard"][0]
    else:
        assert table.lookup_all("__stack_chk_guard") == []


def test_symbolize_uses_the_kernel_format() -> None:
    table = SymbolTable.load(binary("global"))
    rec = table.function("recurse")
    where = table.symbolize(rec.addr + 0x1c)
    assert where == Symbolized("recurse", 0x1c, rec.size)
    assert str(where) == f"recurse+0x1c/{rec.size:#x}"
    assert str(table.symbolize(rec.addr)) == f"recurse+0x0/{rec.size:#x}"
    area = table.lookup("percpu_area")
    assert str(table.symbolize(area.addr + 8)) == f"percpu_area+0x8/{area.size:#x}"
    assert table.symbolize(0x10) is None


def test_symbolize_agrees_with_gdb_info_symbol() -> None:
    path = binary("global")
    table = SymbolTable.load(path)
    rec = table.function("recurse")
    out = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"info symbol {rec.addr + 0x1c:#x}",
                          str(path)], capture_output=True, text=True)
    assert out.returncode == 0, f"gdb not usable (`make setup` installs it): {out.stderr}"
    assert "recurse + 28 in section .text" in out.stdout


def test_build_id_matches_readelf() -> None:
    path = binary("global")
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True)
    match = re.search(r"Build ID: ([0-9a-f]+)", out.stdout)
    assert match is not None
    assert SymbolTable.load(path).build_id == match.group(1)


def test_read_bytes_match_objdump() -> None:
    path = binary("global")
    table = SymbolTable.load(path)
    rec = table.function("recurse")
    out = subprocess.run(["objdump", "-d", f"--start-address={rec.addr:#x}",
                          f"--stop-address={rec.addr + 8:#x}", str(path)],
                         capture_output=True, text=True, check=True)
    hex_bytes = "".join(re.findall(r"^\s*[0-9a-f]+:\s+((?:[0-9a-f]{2} )+)", out.stdout, re.M))
    expected = bytes.fromhex(hex_bytes.replace(" ", ""))
    assert table.read_bytes(rec.addr, len(expected)) == expected
    with pytest.raises(BadInput, match="not in a loaded section"):
        table.read_bytes(0x10, 4)


def test_lookup_prefers_global_and_refuses_ambiguous_locals() -> None:
    syms = [Symbol("helper", 0x1000, 0x10, "func", "local"),
            Symbol("helper", 0x2000, 0x10, "func", "global"),
            Symbol("tmp", 0x3000, 0x10, "func", "local"),
            Symbol("tmp", 0x4000, 0x10, "func", "local"),
            Symbol("only", 0x5000, 0x10, "func", "local")]
    table = SymbolTable(Path("/x/vmlinux"), "exec", None, syms, [])
    assert table.function("helper").addr == 0x2000
    assert [s.addr for s in table.lookup_all("helper")] == [0x2000, 0x1000]
    assert table.function("only").addr == 0x5000
    with pytest.raises(BadInput) as e:
        table.function("tmp")
    assert str(e.value) == ("'tmp' is ambiguous: 2 static functions: tmp@0x3000, tmp@0x4000; "
                            "pick one with fn=NAME@0xADDR, fn=NAME@FILE or fn=0xADDR")
    with pytest.raises(BadInput, match=r"no function named 'helpr' .*did you mean helper"):
        table.function("helpr")
    assert str(table.symbolize(0x4004)) == "tmp+0x4/0x10"


def test_every_function_can_be_named() -> None:
    """tmp@ADDR, tmp@FILE, a bare start address, and clones found from their base name."""
    syms = [Symbol("tmp", 0x3000, 0x10, "func", "local"),
            Symbol("tmp", 0x4000, 0x10, "func", "local"),
            Symbol("load.isra.0", 0x5000, 0x10, "func", "local")]
    table = SymbolTable(Path("/x/vmlinux"), "exec", None, syms, [])
    files = {0x3000: "fs/a.c", 0x4000: "fs/compat_a.c"}
    assert table.function("tmp@0x4000").addr == 0x4000
    assert table.function("tmp@/a.c", files.get).addr == 0x3000
    assert table.function("tmp@compat_a.c", files.get).addr == 0x4000
    assert table.function("0x3000").name == "tmp"
    with pytest.raises(BadInput, match=r"0x3004 is inside tmp \(\+0x4\): give the function's "
                                       r"start, 0x3000"):
        table.function("0x3004")
    with pytest.raises(BadInput, match=r"tmp@0x3000 \(fs/a.c\), tmp@0x4000 \(fs/compat_a.c\)"):
        table.function("tmp", files.get)
    with pytest.raises(BadInput, match=r"no function tmp in a file ending 'b.c': candidates"):
        table.function("tmp@b.c", files.get)
    with pytest.raises(BadInput, match=r"compiler made load.isra.0 from it: use "
                                       r"fn=load.isra.0"):
        table.function("load")
    assert parse_watch("fn=tmp@fs/a.c fo=0x4").func == "tmp@fs/a.c"
    assert parse_watch("fn=0xffffffff813ce620 fo=0").func == "0xffffffff813ce620"


def test_cache_is_used_and_invalidated(monkeypatch, tmp_path) -> None:
    src = binary("global")
    path = tmp_path / "vmlinux"
    shutil.copy(src, path)
    first = SymbolTable.load(path)
    cached = list((tmp_path / "cache").glob("symtab-vmlinux-*.pickle"))
    assert len(cached) == 1

    def no_parse(_path):
        raise AssertionError("parsed again despite a fresh cache")

    monkeypatch.setattr(elf, "_parse", no_parse)
    second = SymbolTable.load(path)
    assert second.symbols == first.symbols and second.build_id == first.build_id
    assert second.read_bytes(first.function("recurse").addr, 1) == b"\x55"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(AssertionError, match="parsed again"):
        SymbolTable.load(path)


def test_corrupt_cache_is_ignored(tmp_path) -> None:
    path = binary("global")
    SymbolTable.load(path)
    for f in (tmp_path / "cache").glob("*.pickle"):
        f.write_bytes(b"not a pickle")
    assert SymbolTable.load(path).function("recurse").size > 0


def _patched(tmp_path: Path, offset: int, value: bytes) -> Path:
    data = bytearray(binary("global").read_bytes())
    data[offset:offset + len(value)] = value
    out = tmp_path / "patched"
    out.write_bytes(bytes(data))
    return out


def test_rejects_files_that_are_not_elf64_x86_64(tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(BadInput, match="is not an ELF file"):
        SymbolTable.load(text, cache=False)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(BadInput, match="is not an ELF file"):
        SymbolTable.load(empty, cache=False)
    with pytest.raises(BadInput, match="cannot read"):
        SymbolTable.load(tmp_path / "missing", cache=False)
    with pytest.raises(BadInput, match=r"wrong architecture \(e_machine 183"):
        SymbolTable.load(_patched(tmp_path, 18, (183).to_bytes(2, "little")), cache=False)
    with pytest.raises(BadInput, match="wrong architecture: need ELF64"):
        SymbolTable.load(_patched(tmp_path, 4, b"\x01"), cache=False)


def test_rejects_stripped_and_relocatable(tmp_path) -> None:
    stripped = tmp_path / "stripped"
    subprocess.run(["strip", "--strip-all", "-o", str(stripped), str(binary("global"))],
                   check=True)
    with pytest.raises(BadInput, match=r"has no symbols \(.symtab missing: stripped\?\)"):
        SymbolTable.load(stripped, cache=False)
    obj = tmp_path / "k.o"
    subprocess.run(["gcc", "-c", "-O2", "-x", "c", "-", "-o", str(obj)],
                   input="int f(void){return 1;}", text=True, check=True)
    with pytest.raises(BadInput, match="relocatable object"):
        SymbolTable.load(obj, cache=False)
