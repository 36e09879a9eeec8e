"""Kernel-module support without a guest: the module list walk, kallsyms, placeholder
bases in a real relocatable object, shifted specs, late specs in the engine, and the
initramfs writer of images/linux/build.py."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import subprocess
from pathlib import Path

from kswgdb.symbols.module import load_module, section_of
from kswgdb.watch.modules import ModuleLayout, loaded_modules, module_symbols, shift_spec
from tests.unit.fake_target import FakeTarget, Program
from tests.unit.test_engine import PROBE, RET_SITE, WRITER_PC, canary_spec, make

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = ModuleLayout(modules_head=0x1000, list=8, name=24, kallsyms=100,
                      ks_symtab=0, ks_num=8, ks_strtab=16)


def _q(v: int) -> bytes:
    return struct.pack("<Q", v)


def _module(fake: FakeTarget, mod: int, name: str, nxt: int, syms: dict[str, int]) -> None:
    fake.write(mod + LAYOUT.list, _q(nxt))
    fake.write(mod + LAYOUT.name, name.encode() + b"\0")
    ks, symtab, strtab = mod + 0x400, mod + 0x500, mod + 0x900
    fake.write(mod + LAYOUT.kallsyms, _q(ks))
    strings = b"\0"
    entries = [struct.pack("<IBBHQQ", 0, 0, 0, 0, 0, 0)]
    for sym, addr in syms.items():
        entries.append(struct.pack("<IBBHQQ", len(strings), 0x02, 0, 1, addr, 16))
        strings += sym.encode() + b"\0"
    entries.append(struct.pack("<IBBHQQ", len(strings), 0x01, 0, 1, 0xdead, 8))  # an object
    strings += b"some_data\0"
    fake.write(symtab, b"".join(entries))
    fake.write(strtab, strings)
    fake.write(ks + LAYOUT.ks_symtab, _q(symtab))
    fake.write(ks + LAYOUT.ks_num, _q(len(entries)))
    fake.write(ks + LAYOUT.ks_strtab, _q(strtab))


def test_module_list_walk_and_kallsyms_give_function_addresses():
    fake = FakeTarget()
    a, b = 0x10000, 0x20000
    fake.write(LAYOUT.modules_head, _q(a + LAYOUT.list))
    _module(fake, a, "lkdtm", b + LAYOUT.list, {"lkdtm_CORRUPT_STACK": 0xffffffffc0202e6e})
    _module(fake, b, "ext4", LAYOUT.modules_head, {"ext4_fill_super": 0xffffffffc0300000})
    mods = loaded_modules(LAYOUT, fake.read)
    assert mods == {"lkdtm": a, "ext4": b}
    assert module_symbols(LAYOUT, a, fake.read) == {"lkdtm_CORRUPT_STACK": 0xffffffffc0202e6e}


def test_empty_module_list():
    fake = FakeTarget()
    fake.write(LAYOUT.modules_head, _q(LAYOUT.modules_head))
    assert loaded_modules(LAYOUT, fake.read) == {}


def test_relocatable_object_sections_get_distinct_bases_and_lines(tmp_path: Path):
    src = tmp_path / "mod.c"
    src.write_text(
        "int hot(int x)\n{\n\treturn x * 3;\n}\n"
        "__attribute__((cold, noinline)) int cold_fn(int x)\n{\n\treturn x + 7;\n}\n")
    obj = tmp_path / "mod.ko"
    subprocess.run(["gcc", "-O2", "-g", "-c", "-o", str(obj), str(src)], check=True)
    program = load_module(obj)
    hot, cold = program.function("hot"), program.function("cold_fn")
    assert section_of(hot.addr) != section_of(cold.addr)     # .text vs .text.unlikely
    assert program.source_line(hot.addr).line in (2, 3)
    assert program.source_line(cold.addr).line in (6, 7)
    assert program.analyze(cold).code.instructions


def test_shift_spec_moves_every_code_address():
    spec = canary_spec()
    spec = spec.__class__(**{**spec.__dict__, "exits": ((PROBE + 0x20, "rsp", 8),),
                             "check_ends": (PROBE + 0x18,)})
    moved = shift_spec(spec, 0x1000)
    assert (moved.func_addr, moved.probe_addr) == (spec.func_addr + 0x1000, PROBE + 0x1000)
    assert moved.exits == ((PROBE + 0x1020, "rsp", 8),) and moved.check_ends == (PROBE + 0x1018,)
    assert (moved.offset, moved.base, moved.cfa_offset) == (spec.offset, spec.base, spec.cfa_offset)


def test_a_spec_added_after_install_arms_and_catches():
    fake = FakeTarget()
    prog = Program(fake, PROBE, RET_SITE)
    f = prog.call(task=0xA000, sp=0x8000_3f00)
    prog.store(task=0xB000, addr=f["canary"], value=b"\x41" * 8, pc=WRITER_PC, sp=0x9000_3f00,
               cpu=1)
    prog.ret(task=0xA000, frame=f)
    engine = make([], fake)
    assert PROBE not in fake.breakpoints
    assert engine.add_spec(canary_spec()) == 0
    assert PROBE in fake.breakpoints
    result = engine.run()
    assert len(result.hits) == 1 and engine.summary()[0]["armed"] == 1
    hooked = []
    engine.add_hook(0x40_5000, hooked.append)
    assert 0x40_5000 in fake.breakpoints


def _load_build_script():
    spec = importlib.util.spec_from_file_location("linux_build", ROOT / "images/linux/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_initramfs_is_a_newc_archive_with_init_busybox_module_and_console(tmp_path: Path):
    build = _load_build_script()
    for name, data in (("busybox", b"\x7fELFbusybox"), ("init", b"#!/bin/sh\n"),
                       ("lkdtm.ko", b"\x7fELFko"), ("qemu_fw_cfg.ko", b"\x7fELFfw")):
        (tmp_path / name).write_bytes(data)
    out = tmp_path / "initrd.img"
    build.write_initramfs(tmp_path / "busybox", tmp_path / "init",
                          [tmp_path / "lkdtm.ko", tmp_path / "qemu_fw_cfg.ko"], out)
    blob = gzip.decompress(out.read_bytes())
    entries, pos = {}, 0
    while True:
        assert blob[pos:pos + 6] == b"070701"
        f = [int(blob[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        name_at = pos + 110
        name = blob[name_at:name_at + f[11] - 1].decode()
        data_at = name_at + f[11] + (-(110 + f[11]) % 4)
        data = blob[data_at:data_at + f[6]]
        pos = data_at + f[6] + (-f[6] % 4)
        if name == "TRAILER!!!":
            break
        entries[name] = (f[1], (f[9], f[10]), data)
    assert entries["init"][0] == 0o100755 and entries["init"][2] == b"#!/bin/sh\n"
    assert entries["bin/busybox"][2] == b"\x7fELFbusybox"
    assert entries["lib/modules/lkdtm.ko"][2] == b"\x7fELFko"
    assert entries["lib/modules/qemu_fw_cfg.ko"][2] == b"\x7fELFfw"
    assert entries["dev/console"][:2] == (0o020600, (5, 1))
    assert entries["proc"][0] == 0o040755
