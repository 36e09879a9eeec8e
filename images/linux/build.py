#!/usr/bin/env python3
"""Build images/linux.toml's artifacts from Debian's own packages (``make image-linux``).

Nothing is installed system-wide: every package is fetched with ``apt-get
download`` into ``images/linux/cache/`` and unpacked there, and the four things
the image needs land in ``images/linux/out/``:

* ``vmlinuz``: Debian's cloud kernel, as shipped;
* ``vmlinux``: its debug twin from the ``-dbg`` package (only that member is
  extracted: the package is ~283 MB, the vmlinux ~590 MB), given a ``.gdb_index``
  section by Debian's ``gdb-add-index`` so the gdb that unwinds hit backtraces
  starts in about a second instead of reading all the DWARF;
* ``lkdtm.ko``: LKDTM, which Debian does not build, compiled out of tree from
  ``linux-source`` against Debian's headers package;
* ``qemu_fw_cfg.ko``: the kernel's own fw_cfg driver (a module in Debian's cloud
  kernel, CONFIG_FW_CFG_SYSFS=m): loaded by /init, it tells QEMU's ``-device
  vmcoreinfo`` where the kernel's VMCOREINFO note is, so a freeze dump carries it and
  drgn and crash open the dump as a Linux vmcore;
* ``initrd.img``: a newc cpio (written here; ``cpio`` is not on the machine) with
  busybox-static, ``images/linux/init``, ``lkdtm.ko`` and ``qemu_fw_cfg.ko``.

``out/test-modules/kswbug.ko``: the test suite's own buggy module
(tests/fixtures/modules/kswbug), built against the same headers, and
``out/test-modules/virtio/``: the kernel package's own virtio-blk modules;
``--external-module SRC --module-out FILE.ko`` builds any such module alone.

Each step skips itself when its output exists, and the Makefile's stamp keeps a
second ``make image-linux`` from running this at all. Every external command is an
argument list (no shell); pipes are built with `subprocess.Popen`.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from kswgdb.qemu.cpio import S_IFDIR, S_IFREG, Entry, archive  # noqa: E402 - shared

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
OUT = HERE / "out"
INIT_SCRIPT = HERE / "init"
META_PACKAGE = "linux-image-cloud-amd64"
#: The fw_cfg driver, which hands QEMU's vmcoreinfo device the VMCOREINFO note's address.
FW_CFG_MODULE = "qemu_fw_cfg.ko"
#: The test suite's own buggy module (tests/linux/test_own_module.py), built with the
#: image into out/test-modules/ (not modules_dir: a user gives it with --module).
TEST_MODULE = HERE.parents[1] / "tests" / "fixtures" / "modules" / "kswbug"
#: Debian's own virtio-blk modules (not built into the cloud kernel), for the test that
#: gives a guest disks with --drive: path under kernel/drivers/ -> file name.
VIRTIO_MODULES = {f"{d}/{m}": m for d, m in (
    ("virtio", "virtio"), ("virtio", "virtio_ring"), ("virtio", "virtio_pci"),
    ("virtio", "virtio_pci_legacy_dev"), ("virtio", "virtio_pci_modern_dev"),
    ("block", "virtio_blk"))}

#: LKDTM's UNSET_SMEP test calls native_write_cr4, which Debian's kernel does not
#: export: the module would not load. Its body is compiled out (the test then says XFAIL).
_UNSET_SMEP_OLD = ("static void lkdtm_UNSET_SMEP(void)\n{\n"
                   "#if IS_ENABLED(CONFIG_X86_64) && !IS_ENABLED(CONFIG_UML)\n")
_UNSET_SMEP_NEW = ("static void lkdtm_UNSET_SMEP(void)\n{\n"
                   "#if 0 /* kswgdb: native_write_cr4 is not exported by this kernel */\n")


class BuildError(Exception):
    """A step failed; the message says which and why."""


def _run(argv: list[str], *, cwd: Path | None = None, capture: bool = False) -> str:
    proc = subprocess.run(argv, cwd=cwd, text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()[-3:] if capture else []
        raise BuildError(f"{argv[0]} failed (status {proc.returncode}): {' '.join(argv)}"
                         + (f": {' | '.join(detail)}" if detail else ""))
    return proc.stdout or ""


def _pipe(producer: list[str], consumer: list[str], cwd: Path | None = None) -> None:
    """``producer | consumer`` without a shell."""
    p1 = subprocess.Popen(producer, stdout=subprocess.PIPE, cwd=cwd)
    assert p1.stdout is not None
    p2 = subprocess.Popen(consumer, stdin=p1.stdout, cwd=cwd)
    p1.stdout.close()
    rc2 = p2.wait()
    rc1 = p1.wait()
    if rc1 != 0 or rc2 != 0:
        raise BuildError(f"{producer[0]} | {consumer[0]} failed ({rc1}, {rc2})")


class Step:
    """Prints a step's name and how long it took (the figures quoted in the README)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> Step:
        self.t0 = time.monotonic()
        print(f"[image-linux] {self.name} ...", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            print(f"[image-linux] {self.name}: {time.monotonic() - self.t0:.1f} s", flush=True)


# -- packages ----------------------------------------------------------------------


def _depends(package: str) -> list[str]:
    out = _run(["apt-cache", "depends", package], capture=True)
    return [line.split(":", 1)[1].strip() for line in out.splitlines()
            if line.strip().startswith("Depends:")]


def _candidate(package: str) -> str | None:
    out = _run(["apt-cache", "policy", package], capture=True)
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            return None if version == "(none)" else version
    return None


def resolve_packages() -> dict[str, str]:
    """Package name -> version, all from the same kernel build as the current cloud image."""
    if _candidate(META_PACKAGE) is None:
        print("[image-linux] no candidate for linux-image-cloud-amd64: running apt-get update")
        _run(["apt-get", "update", "-qq"])
    image = next((d for d in _depends(META_PACKAGE) if d.startswith("linux-image-")), None)
    if image is None:
        raise BuildError(f"{META_PACKAGE} names no linux-image-* package")
    abi = image.removeprefix("linux-image-")                    # 6.1.0-56-cloud-amd64
    version = _candidate(image)
    if version is None:
        raise BuildError(f"no installable version of {image}")
    headers = f"linux-headers-{abi}"
    wanted = [image, f"{image}-dbg", headers]
    wanted += [d for d in _depends(headers)
               if d.startswith(("linux-headers-", "linux-kbuild-"))]
    series = ".".join(version.split(".")[:2])                   # 6.1
    wanted.append(f"linux-source-{series}")
    pins = {name: version for name in wanted}
    pins["busybox-static"] = _candidate("busybox-static") or ""
    return pins


def download(pins: dict[str, str], debs: Path) -> dict[str, Path]:
    """``apt-get download`` what is not cached yet; package name -> .deb path."""
    debs.mkdir(parents=True, exist_ok=True)

    def cached(name: str) -> Path | None:
        hits = sorted(debs.glob(f"{name}_*.deb"))
        return hits[-1] if hits else None

    missing = [f"{n}={v}" if v else n for n, v in pins.items() if cached(n) is None]
    if missing:
        with Step(f"apt-get download ({len(missing)} packages)"):
            _run(["apt-get", "download", "-q", *missing], cwd=debs)
    found = {name: cached(name) for name in pins}
    lost = [n for n, p in found.items() if p is None]
    if lost:
        raise BuildError(f"apt-get download left out: {', '.join(lost)}")
    return {n: p for n, p in found.items() if p is not None}


def _member(deb: Path, suffix: str) -> str:
    """The one path in ``deb`` that ends with ``suffix`` and is a regular file."""
    listing = _run(["dpkg-deb", "--contents", str(deb)], capture=True)
    for line in listing.splitlines():
        if line.startswith("-"):
            path = line.split()[-1]
            if path.endswith(suffix):
                return path
    raise BuildError(f"{deb.name} has no file ending in {suffix}")


def extract_member(deb: Path, suffix: str, dest: Path) -> None:
    """Copy one file out of ``deb`` without unpacking the rest."""
    member = _member(deb, suffix)
    tmp = dest.with_name(dest.name + ".part")
    with open(tmp, "wb") as out:
        p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        assert p1.stdout is not None
        p2 = subprocess.Popen(["tar", "-xO", member], stdin=p1.stdout, stdout=out)
        p1.stdout.close()
        if p2.wait() != 0 or p1.wait() != 0:
            raise BuildError(f"extracting {member} from {deb.name} failed")
    tmp.replace(dest)


def extract_members(deb: Path, wanted: dict[str, Path]) -> None:
    """Copy several files out of ``deb`` in one pass: path suffix -> destination."""
    listing = _run(["dpkg-deb", "--contents", str(deb)], capture=True)
    paths = [line.split()[-1] for line in listing.splitlines() if line.startswith("-")]
    members = {}
    for suffix, dest in wanted.items():
        found = next((p for p in paths if p.endswith(suffix)), None)
        if found is None:
            raise BuildError(f"{deb.name} has no file ending in {suffix}")
        members[found] = dest
    with tempfile.TemporaryDirectory(dir=next(iter(wanted.values())).parent.parent) as tmp:
        p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        assert p1.stdout is not None
        p2 = subprocess.Popen(["tar", "-x", "-C", tmp, *members], stdin=p1.stdout)
        p1.stdout.close()
        if p2.wait() != 0 or p1.wait() != 0:
            raise BuildError(f"extracting {len(members)} files from {deb.name} failed")
        for member, dest in members.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(Path(tmp) / member, dest)


# -- gdb index -------------------------------------------------------------------


def has_section(elf: Path, name: str) -> bool:
    """Does ``elf`` have a section called ``name``? (section headers read with struct)."""
    with open(elf, "rb") as f:
        head = f.read(64)
        shoff, = struct.unpack_from("<Q", head, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        headers = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
        strtab = headers[shstrndx]
        f.seek(strtab[4])
        names = f.read(strtab[5])
    wanted = name.encode() + b"\0"
    return any(names[h[0]:h[0] + len(wanted)] == wanted for h in headers)


def add_gdb_index(vmlinux: Path) -> None:
    """Give ``vmlinux`` a ``.gdb_index`` (once: an indexed file is left alone).

    Without it gdb reads every compile unit of the 590 MB file before its first
    lookup (about 20 s per start here); with it, about a second. gdb-add-index
    rewrites the file in place (objcopy), so it runs on the project's own copy.
    """
    if has_section(vmlinux, ".gdb_index"):
        return
    tool = shutil.which("gdb-add-index")
    if tool is None:
        print("[image-linux] gdb-add-index not found (it ships with gdb): hit backtraces "
              "will start slowly", flush=True)
        return
    with Step("gdb-add-index vmlinux"):
        _run([tool, str(vmlinux)], capture=True)


# -- lkdtm.ko --------------------------------------------------------------------


def unpack_headers(debs: dict[str, Path], work: Path) -> Path:
    """Unpack the headers + kbuild packages under ``work/root`` (afresh); that root."""
    root = work / "root"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name, deb in debs.items():
        if name.startswith(("linux-headers-", "linux-kbuild-")):
            _run(["dpkg-deb", "-x", str(deb), str(root)])
    return root


def make_module(root: Path, src: Path, *variables: str) -> None:
    """``make modules`` for the out-of-tree module in ``src`` against the headers at ``root``."""
    usr_src = root / "usr" / "src"
    flavour = next(p for p in usr_src.iterdir()
                   if p.name.startswith("linux-headers-") and not p.name.endswith("-common"))
    common = next(p for p in usr_src.iterdir() if p.name.endswith("-common"))
    # The flavour's Makefile is one line, "include /usr/src/<common>/Makefile": give
    # make the common Makefile directly, so nothing under /usr/src is needed.
    _run(["make", "-s", "-C", str(flavour), "-f", str(common / "Makefile"),
          f"M={src}", *variables, f"-j{os.cpu_count() or 1}", "modules"])


def build_lkdtm(debs: dict[str, Path], work: Path, dest: Path) -> None:
    """Compile lkdtm.ko out of tree against the unpacked headers packages."""
    root = unpack_headers(debs, work)
    src = work / "lkdtm"
    if src.exists():
        shutil.rmtree(src)
    source_deb = next(p for n, p in debs.items() if n.startswith("linux-source-"))
    tarball = _member(source_deb, ".tar.xz")
    series_dir = Path(tarball).name.removesuffix(".tar.xz")    # linux-source-6.1
    unpack = work / "source"
    unpack.mkdir(exist_ok=True)
    with Step("extract drivers/misc/lkdtm from linux-source"):
        p1 = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(source_deb)],
                              stdout=subprocess.PIPE)
        p2 = subprocess.Popen(["tar", "-xO", tarball], stdin=p1.stdout, stdout=subprocess.PIPE)
        assert p1.stdout is not None and p2.stdout is not None
        p1.stdout.close()
        p3 = subprocess.Popen(["tar", "-xJ", "-C", str(unpack),
                               f"{series_dir}/drivers/misc/lkdtm"], stdin=p2.stdout)
        p2.stdout.close()
        if p3.wait() != 0 or p2.wait() != 0 or p1.wait() != 0:
            raise BuildError("extracting drivers/misc/lkdtm from linux-source failed")
    shutil.copytree(unpack / series_dir / "drivers/misc/lkdtm", src)
    bugs = src / "bugs.c"
    text = bugs.read_text()
    if _UNSET_SMEP_OLD not in text:
        raise BuildError("lkdtm/bugs.c: UNSET_SMEP not found where expected")
    bugs.write_text(text.replace(_UNSET_SMEP_OLD, _UNSET_SMEP_NEW))

    with Step("build lkdtm.ko"):
        make_module(root, src, "CONFIG_LKDTM=m")
    shutil.copy2(src / "lkdtm.ko", dest)


def build_external_module(src: Path, dest: Path, cache: Path = CACHE) -> None:
    """Compile the out-of-tree module in ``src`` (a Kbuild file and its sources) for the
    image's kernel, into ``dest`` (a .ko): the headers lkdtm was built against, reused
    when already unpacked. The tests build their own buggy module this way."""
    work = cache / "work"
    root = work / "root"
    if not (root / "usr" / "src").is_dir():
        with Step("resolve packages"):
            pins = resolve_packages()
        root = unpack_headers(download(pins, cache / "debs"), work)
    build_dir = work / f"ext-{src.name}"
    if build_dir.exists():
        shutil.rmtree(build_dir)
    shutil.copytree(src, build_dir)
    with Step(f"build {src.name}"):
        make_module(root, build_dir)
    kos = sorted(build_dir.glob("*.ko"))
    if len(kos) != 1:
        raise BuildError(f"{src}: expected one .ko from the build, got {len(kos)}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(kos[0], dest)


# -- initramfs --------------------------------------------------------------------


def write_initramfs(busybox: Path, init: Path, modules: list[Path], dest: Path) -> None:
    """A gzip'd newc cpio: /init, /bin/busybox, /lib/modules/*.ko and the mount points."""
    dirs = ["bin", "sbin", "dev", "proc", "sys", "lib", "lib/modules", "tmp"]
    entries = [Entry(d, S_IFDIR | 0o755) for d in dirs]
    # The kernel opens /dev/console for init before devtmpfs is mounted.
    entries.append(Entry("dev/console", 0o020600, rdev=(5, 1)))
    entries += [Entry("init", S_IFREG | 0o755, init.read_bytes()),
                Entry("bin/busybox", S_IFREG | 0o755, busybox.read_bytes())]
    entries += [Entry(f"lib/modules/{m.name}", S_IFREG | 0o644, m.read_bytes())
                for m in modules]
    tmp = dest.with_name(dest.name + ".part")
    with gzip.open(tmp, "wb", compresslevel=6) as out:
        out.write(archive(entries))
    tmp.replace(dest)


# -- main -------------------------------------------------------------------------


def build(out: Path = OUT, cache: Path = CACHE) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with Step("resolve packages"):
        pins = resolve_packages()
    debs = download(pins, cache / "debs")
    image_deb = next(p for n, p in debs.items()
                     if n.startswith("linux-image-") and not n.endswith("-dbg"))
    dbg_deb = next(p for n, p in debs.items() if n.endswith("-dbg"))

    if not (out / "vmlinuz").exists():
        with Step("extract vmlinuz"):
            extract_member(image_deb, "/boot/" + "vmlinuz-" + _abi(image_deb), out / "vmlinuz")
    if not (out / "vmlinux").exists():
        with Step("extract vmlinux from the -dbg package"):
            extract_member(dbg_deb, "/usr/lib/debug/boot/vmlinux-" + _abi(image_deb),
                           out / "vmlinux")
    add_gdb_index(out / "vmlinux")
    if not (out / "lkdtm.ko").exists():
        build_lkdtm(debs, cache / "work", out / "lkdtm.ko")
    if not (out / FW_CFG_MODULE).exists():
        with Step(f"extract {FW_CFG_MODULE}"):
            extract_member(image_deb, "/drivers/firmware/" + FW_CFG_MODULE, out / FW_CFG_MODULE)
    busybox = cache / "busybox"
    if not busybox.exists():
        extract_member(debs["busybox-static"], "/bin/busybox", busybox)
    with Step("write initrd.img"):
        write_initramfs(busybox, INIT_SCRIPT, [out / "lkdtm.ko", out / FW_CFG_MODULE],
                        out / "initrd.img")
    test_module = out / "test-modules" / f"{TEST_MODULE.name}.ko"
    if not test_module.exists() or test_module.stat().st_mtime < max(
            f.stat().st_mtime for f in TEST_MODULE.iterdir()):
        build_external_module(TEST_MODULE, test_module, cache)
    virtio = out / "test-modules" / "virtio"
    if not all((virtio / f"{name}.ko").exists() for name in VIRTIO_MODULES.values()):
        with Step("extract the virtio-blk modules"):
            extract_members(image_deb, {f"/kernel/drivers/{member}.ko": virtio / f"{name}.ko"
                                        for member, name in VIRTIO_MODULES.items()})


def _abi(image_deb: Path) -> str:
    return image_deb.name.split("_")[0].removeprefix("linux-image-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--external-module", type=Path, default=None, metavar="SRC",
                        help="only build the out-of-tree module in SRC, into --module-out")
    parser.add_argument("--module-out", type=Path, default=None, metavar="FILE.ko")
    args = parser.parse_args(argv)
    if (args.external_module is None) != (args.module_out is None):
        parser.error("--external-module and --module-out go together")
    t0 = time.monotonic()
    try:
        if args.external_module is not None:
            build_external_module(args.external_module, args.module_out, args.cache)
            print(f"[image-linux] {args.module_out}")
            return 0
        build(args.out, args.cache)
    except BuildError as exc:
        print(f"image-linux: error: {exc}", file=sys.stderr)
        return 3
    print(f"[image-linux] done in {time.monotonic() - t0:.1f} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
