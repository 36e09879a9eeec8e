"""Source lines kept on disk per compile unit, and DWARF read through a mapped file.

`kswgdb disasm` on a Debian vmlinux spent most of its time decoding one CU's line
program and copying 220 MB of debug sections into memory; both are gone after the
first open. What must not change: every answer.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from kswgdb.symbols import lines as lines_mod
from kswgdb.symbols.dwarf import DwarfInfo, _SectionView
from kswgdb.symbols.lines import LineTable, RowCache
from tests.fixtures.build import binary

FLAVOURS = ["global", "dwarf4"]


def _addresses(dwarf: DwarfInfo) -> list[int]:
    """Every address of every function the test binary's symbol table has, a few past ends."""
    from kswgdb.symbols.elf import SymbolTable

    table = SymbolTable.load(dwarf.path, cache=False)
    out = []
    for s in table.symbols:
        if s.kind == "func" and s.size:
            out += range(s.addr - 1, s.addr + s.size + 2)
    return out


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_rows_from_the_disk_cache_answer_like_a_fresh_decode(flavour: str, tmp_path: Path,
                                                             monkeypatch) -> None:
    path = binary(flavour)
    fresh = LineTable(DwarfInfo.open(path))
    addrs = _addresses(fresh.dwarf)
    expected = [fresh.lookup(a) for a in addrs]
    assert sum(x is not None for x in expected) > len(addrs) // 2

    first = LineTable(DwarfInfo.open(path), RowCache(path, None, tmp_path))
    assert [first.lookup(a) for a in addrs] == expected
    stored = list(first.cache.dir.iterdir())
    assert stored and all(p.suffix == ".pickle" for p in stored)

    def no_decode(*_a):
        raise AssertionError("decoded again: the stored rows were not used")

    monkeypatch.setattr(lines_mod, "_decode", no_decode)
    second = LineTable(DwarfInfo.open(path), RowCache(path, None, tmp_path))
    assert [second.lookup(a) for a in addrs] == expected


def test_a_rebuilt_file_gets_fresh_rows(tmp_path: Path) -> None:
    """The key holds size and mtime: a file rebuilt at the same path is decoded anew."""
    path = tmp_path / "k.elf"
    path.write_bytes(binary("global").read_bytes())
    a = RowCache(path, "abc", tmp_path / "cache")
    path.write_bytes(binary("dwarf4").read_bytes())
    assert RowCache(path, "abc", tmp_path / "cache").dir != a.dir


def test_a_corrupt_stored_file_is_decoded_again(tmp_path: Path) -> None:
    path = binary("global")
    cache = RowCache(path, None, tmp_path)
    table = LineTable(DwarfInfo.open(path), cache)
    addr = next(a for a in _addresses(table.dwarf) if table.lookup(a) is not None)
    want = table.lookup(addr)
    for p in cache.dir.iterdir():
        p.write_bytes(b"not a pickle")
    assert LineTable(DwarfInfo.open(path), RowCache(path, None, tmp_path)).lookup(addr) == want


def test_debug_sections_are_views_of_the_mapped_file() -> None:
    """A linked file's debug sections are read in place, not copied (pyelftools' BytesIO)."""
    dwarf = DwarfInfo.open(binary("global"))
    stream = dwarf.info.debug_info_sec.stream
    assert isinstance(stream, _SectionView) and not isinstance(stream, io.BytesIO)
    size = dwarf.info.debug_info_sec.size
    raw = Path(dwarf.path).read_bytes()
    offset = dwarf.info.debug_info_sec.global_offset
    stream.seek(0)
    assert stream.read(64) == raw[offset:offset + 64]
    stream.seek(-8, 2)
    assert stream.read(100) == raw[offset + size - 8:offset + size]
    assert stream.read(1) == b"" and stream.tell() == size


def test_aranges_kept_on_disk_find_the_same_compile_units(tmp_path: Path, monkeypatch) -> None:
    path = binary("global")
    plain = DwarfInfo.open(path)
    addrs = _addresses(plain)
    expected = [getattr(plain.cu_at(a), "cu_offset", None) for a in addrs]
    assert any(e is not None for e in expected)
    first = DwarfInfo.open(path)
    first.aranges_store = tmp_path / "aranges.pickle"
    assert [getattr(first.cu_at(a), "cu_offset", None) for a in addrs] == expected
    assert first.aranges_store.is_file()
    second = DwarfInfo.open(path)
    second.aranges_store = first.aranges_store
    monkeypatch.setattr(second.info, "get_aranges", lambda: pytest.fail("parsed again"))
    assert [getattr(second.cu_at(a), "cu_offset", None) for a in addrs] == expected
