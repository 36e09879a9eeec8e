"""The register layout from QEMU 7.2's recorded target.xml, and g decoding."""

from __future__ import annotations

import pytest

from kswgdb.gdbstub.registers import RegisterLayout

from .gdbstub_support import recorded_g, xml_files


@pytest.fixture(scope="module")
def layout() -> RegisterLayout:
    return RegisterLayout.from_xml(xml_files().__getitem__)


def test_layout_matches_qemu_72(layout: RegisterLayout) -> None:
    assert layout.architecture == "i386:x86-64"
    assert len(layout) == 66
    assert layout.g_size == 608  # QEMU's g reply is 1216 hex digits
    expect = {
        "rax": (0, 64, 0),
        "rbp": (6, 64, 48),
        "rsp": (7, 64, 56),
        "rip": (16, 64, 128),
        "eflags": (17, 32, 136),
        "cs": (18, 32, 140),
        "fs_base": (24, 64, 164),
        "gs_base": (25, 64, 172),
        "k_gs_base": (26, 64, 180),
        "cr0": (27, 64, 188),
        "efer": (32, 64, 228),
        "st0": (33, 80, 236),
        "xmm0": (49, 128, 348),
        "mxcsr": (65, 32, 604),
    }
    for name, (regnum, bits, offset) in expect.items():
        r = layout[name]
        assert (r.regnum, r.bitsize, r.offset) == (regnum, bits, offset), name
    assert "gs_base" in layout and "nope" not in layout
    assert layout.by_num[16].name == "rip"


def test_decode_g_agrees_with_p_for_every_register(layout: RegisterLayout) -> None:
    rec = recorded_g()
    assert len(rec["g"]) == 2 * layout.g_size
    values = layout.decode_g(rec["g"])
    assert set(values) == set(layout.by_name)
    for name, p_reply in rec["p"].items():
        assert values[name] == int.from_bytes(bytes.fromhex(p_reply), "little"), name
    # written as 0x1122334455667788 through P: outside long mode QEMU keeps 32 bits
    assert values["rbp"] == 0x55667788
    assert values["gs_base"] == 0x1000  # likewise (written 0xffff888000001000)


def test_decode_g_selected_names_and_unavailable(layout: RegisterLayout) -> None:
    g = recorded_g()["g"]
    four = layout.decode_g(g, ("rsp", "rbp", "rip", "gs_base"))
    assert list(four) == ["rsp", "rbp", "rip", "gs_base"]
    rip = layout["rip"]
    hidden = g[: 2 * rip.offset] + "xx" * 8 + g[2 * (rip.offset + 8) :]
    values = layout.decode_g(hidden)
    assert "rip" not in values and values["rbp"] == 0x55667788
    short = layout.decode_g(g[: 2 * 136])  # only the first 17 registers
    assert "rip" in short and "eflags" not in short


def test_encode_register(layout: RegisterLayout) -> None:
    assert layout.encode("rip", 0xFFF0) == "f0ff000000000000"
    assert layout.encode("cs", 0xF000) == "00f00000"


def test_explicit_regnum_and_feature_root() -> None:
    files = {
        "target.xml": '<target><architecture>x</architecture><xi:include href="a.xml"/></target>',
        "a.xml": '<feature name="f"><reg name="r0" bitsize="32"/>'
        '<reg name="r9" bitsize="64" regnum="9"/><reg name="r10" bitsize="16"/></feature>',
    }
    lay = RegisterLayout.from_xml(files.__getitem__)
    assert [(r.name, r.regnum, r.offset) for r in lay.registers] == [
        ("r0", 0, 0),
        ("r9", 9, 4),
        ("r10", 10, 12),
    ]
