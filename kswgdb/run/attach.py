"""`kswgdb attach`: the rig's parts for a QEMU the user started, and how it is left.

`kswgdb run` and `kswgdb attach` share everything: `prepare` -> `Plan`, `open_rig`
-> `Rig`, the one-shot driver. Only three parts differ, handed to the rig here:

* the machine is an `AttachedMachine` (connects to the user's sockets, owns no
  process, never quits QEMU);
* the kernel is placed where it already runs: a guest stopped at its first
  instruction (``-S``) is started and searched as `run` does; a booted one is
  searched from its running code (`kswgdb.watch.kaslr_running`). Either way the
  symbols are then checked against the guest's memory (build-id, or the watched
  functions' bytes): a mismatch is one line, exit 2, and the guest is left as found;
* the stub is released by `detach`: every breakpoint and watchpoint kswgdb
  inserted is removed (``z0``/``z2``/``z3``), then ``D`` resumes the guest and
  QEMU waits for its next debugger. Never ``k``, never QMP ``quit``.

A guest started with ``-S`` is *started* by the attach (as gdb's ``continue``
would): the watches arm from its first instruction, and it is left running.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kswgdb import image as image_mod
from kswgdb.errors import BadInput, KswError
from kswgdb.gdbstub.attach import check_address, connect_existing, settle
from kswgdb.gdbstub.client import RemoteClient
from kswgdb.gdbstub.transport import parse_address
from kswgdb.qemu.accel import AccelDecision
from kswgdb.qemu.attached import AttachedMachine
from kswgdb.symbols.program import Program
from kswgdb.symbols.running import FUNCTION_BYTES, kernel_mismatch
from kswgdb.watch.kaslr import KernelPlacement, place_kernel
from kswgdb.watch.kaslr_running import place_running_kernel
from kswgdb.watch.target import Target

if TYPE_CHECKING:
    from kswgdb.run.options import RunOptions
    from kswgdb.run.prepare import Plan
    from kswgdb.run.rig import Rig

#: x86 reset: the first instruction runs at CS base 0xffff0000 + IP 0xfff0.
RESET_IP = 0xFFF0
#: How long the stub has to stop a running guest when we leave.
STOP_TIMEOUT = 5.0


# ------------------------------------------------------------------ prepare
def attached_image(opts: RunOptions) -> image_mod.Image:
    """The symbols of the attached kernel: an image description, or a bare vmlinux.

    A bare ELF becomes an image of its own (kernel = symbols = that file); its flavour
    is ``--guest`` or, by default, "linux" when it has ``start_kernel``.
    """
    spec = opts.image
    if spec is None:
        raise BadInput("attach needs the kernel's symbols: --vmlinux PATH (or --image NAME)")
    path = Path(spec)
    if path.suffix == ".toml" or not path.is_file():
        image = image_mod.load(spec)
        if opts.modules_dir is not None:
            image = _with_modules(image, opts.modules_dir)
        return image
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise BadInput(f"--vmlinux {path}: {exc.strerror or exc}") from None
    if magic != b"\x7fELF":
        raise BadInput(f"--vmlinux {path}: not an ELF file (give the vmlinux with symbols, "
                       "not the compressed bzImage)")
    guest = opts.guest or ("linux" if Program.load(path).symtab.lookup_all("start_kernel")
                           else "kswtest")
    image = image_mod.Image(name=path.name, path=path.resolve(), kernel=path.resolve(),
                            symbols=path.resolve(), guest=guest)
    return _with_modules(image, opts.modules_dir) if opts.modules_dir is not None else image


def _with_modules(image: image_mod.Image, modules_dir: Path) -> image_mod.Image:
    from dataclasses import replace

    if not Path(modules_dir).is_dir():
        raise BadInput(f"--modules-dir {modules_dir}: not a directory")
    return replace(image, modules_dir=Path(modules_dir).resolve())


def attached_accel(request: str) -> AccelDecision:
    """What the attached QEMU runs: never probed (it is not ours); TCG unless told."""
    if request == "kvm":
        return AccelDecision("kvm", "requested (the attached QEMU runs KVM)", "requested")
    if request not in ("auto", "tcg"):
        raise BadInput(f"--accel must be auto, tcg or kvm, not {request!r}")
    return AccelDecision("tcg", "attached QEMU, assumed TCG (--accel kvm if it runs KVM)",
                         "requested")


def check_attach_options(opts: RunOptions) -> None:
    """What attach cannot do, and addresses it must not use, said before anything is
    touched (a remote host is refused: the stub and QMP give full control of the guest)."""
    check_address(opts.attach or "")
    if opts.qmp is not None:
        parse_address(opts.qmp)
    if opts.polls:
        raise BadInput("--poll is not available with attach: physical polls read the guest's "
                       "RAM from the shared file of a QEMU kswgdb starts itself")
    if opts.on_hit == "freeze" and opts.qmp is None:
        raise BadInput("--on-hit freeze writes a vmcore through QMP: give --qmp "
                       "unix:PATH (or use --on-hit detach)")


# ------------------------------------------------------------------ the rig
def rig_options(plan: Plan) -> dict[str, Any]:
    """The `Rig` arguments that make it attach instead of launching QEMU."""
    opts = plan.options
    assert opts.attach is not None
    threads: list[int] = []

    def machine_factory(image: image_mod.Image, **_launch_options: Any) -> AttachedMachine:
        return AttachedMachine(image, opts.attach, opts.qmp)

    def connect(address: str, timeout: float = 5.0) -> RemoteClient:
        client = connect_existing(address, timeout=timeout)
        threads[:] = client.threads()
        return client

    def placer(rig: Rig, target: Target, deadline: float) -> KernelPlacement:
        assert isinstance(rig.machine, AttachedMachine)
        return place_attached(rig.machine, target, rig.plan, deadline, threads or [1],
                              rig.sink)

    return {"machine_factory": machine_factory, "connect": connect, "placer": placer,
            "release_target": detach}


def at_reset(target: Target, thread: int = 1) -> bool:
    """The vCPU is where x86 starts: the guest has not run an instruction (``-S``)."""
    regs = target.registers(thread)
    return regs.pc == RESET_IP and regs.get("cs", 0xF000) == 0xF000


def place_attached(machine: AttachedMachine, target: Target, plan: Plan, deadline: float,
                   threads: list[int], sink: Any = None) -> KernelPlacement:
    """Place the kernel of an attached guest, then prove the symbols are its own."""
    program, guest, accel = plan.program, plan.image.guest, plan.accel.accel
    prelaunch = machine.prelaunch
    if prelaunch is None:
        prelaunch = at_reset(target, threads[0] if threads else 1)
    if prelaunch:
        if sink is not None:
            sink.status("the guest was stopped before its first instruction (-S): kswgdb "
                        "starts it, and leaves it running when it detaches")
        placement = place_kernel(target, program, guest, accel, deadline)
    else:
        placement = place_running_kernel(target, program, guest, threads, deadline)
    if not placement.found:
        assert placement.search is not None
        if placement.search.ending == "mismatch":
            raise BadInput(placement.search.detail)
        return placement        # the guest ended or --timeout: the run says so
    slide = placement.slide.virtual
    functions = [(r.function.name, r.function.addr + slide,
                  program.symtab.read_bytes(r.function.addr, FUNCTION_BYTES))
                 for r in plan.resolved]
    why = kernel_mismatch(target.read, plan.image.symbols, slide, functions,
                          code_is_patched=guest == "linux")
    if why is not None:
        raise BadInput(why)
    return placement


# ------------------------------------------------------------------ leaving
def detach(rig: Rig, target: Target, client: RemoteClient) -> None:
    """Remove every breakpoint and watchpoint we inserted, resume the guest, detach.

    Runs when the rig closes, whatever ended it (a hit with ``--on-hit detach``,
    ``--timeout``, Ctrl-C, an error). Logged as the ``detach`` event.
    """
    if client.transport.closed or client.exited:
        return                      # QEMU went away: nothing to leave
    fields: dict[str, Any] = {}
    try:
        settle(client, limit=STOP_TIMEOUT)      # stopped, nothing left unread
        remove_all = getattr(target, "remove_all", None)
        if remove_all is not None:
            fields.update(remove_all())
        client.detach()
        fields["resumed"] = True
        rig.sink.status(f"detached: removed {fields.get('breakpoints', 0)} breakpoint(s) and "
                        f"{fields.get('watchpoints', 0)} watchpoint(s); the guest runs on")
    except (KswError, OSError) as exc:
        fields.update(resumed=False, error=" ".join(str(exc).split()))
        with contextlib.suppress(KswError, OSError):
            client.transport.send_packet(b"D;1")     # a last try: QEMU resumes on D
            time.sleep(0.05)
        rig.sink.status(f"warning: leaving the guest failed ({fields['error']}): if it is "
                        "paused, resume it with `cont` in QEMU's monitor")
    finally:
        if rig.log is not None:
            with contextlib.suppress(Exception):
                rig.log.write("detach", **fields)


__all__ = ["attached_accel", "attached_image", "check_attach_options", "detach",
           "place_attached", "rig_options"]
