"""One QEMU guest, from launch to a guaranteed stop.

`Machine` is a context manager in the manner of ``qemu.machine.QEMUMachine``:
entering launches QEMU (paused by default, so watchpoints can be armed before the
first guest instruction), leaving always stops it and removes its private run
directory. Between the two it offers the wiring the rest of kswgdb needs: the
gdbstub socket path, a QMP session, the serial console, and `wait_exit`, which
says *how* the guest ended (debug-exit code, triple fault, power-off, timeout,
killed) rather than just that QEMU is gone.

Launch order, and why: we bind the console and QMP sockets *before* starting
QEMU; QEMU connects to them while it initialises (``server=off``), so both links
exist before any guest code runs and the first console byte cannot be lost.
QEMU always starts with ``-S``; a machine created with ``paused=False`` is resumed
through QMP only once both links are up — the test kernel can finish in 40 ms,
and a guest that exits before the QMP greeting would look like a failed launch
and lose its SHUTDOWN event. If QEMU dies during launch, the error comes at once
with its command line and its own error output, not after a connect timeout.

Stale state: a kswgdb killed by SIGKILL cannot remove its run directory (QEMU
itself dies by PR_SET_PDEATHSIG); the next launch sweeps such directories, and
their tmpfs guest-RAM files, once their owner process is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import select
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from kswgdb.errors import KswError
from kswgdb.image import Image
from kswgdb.image import load as load_image
from kswgdb.qemu import binary as qemu_binary
from kswgdb.qemu import guestcmd, reaper
from kswgdb.qemu.accel import AccelDecision, decide
from kswgdb.qemu.argv import QemuOptions, SharedRam, build_argv
from kswgdb.qemu.binary import QemuBinary
from kswgdb.qemu.console import Console
from kswgdb.qemu.drives import Drive, drive_args
from kswgdb.qemu.errors import MachineError, MachineStartError
from kswgdb.qemu.exitnudge import ExitNudge
from kswgdb.qemu.exitstatus import GuestExit, decode_exit, kernel_panic_line
from kswgdb.qemu.qmp import Qmp
from kswgdb.qemu.rundir import RunDir, sweep_stale

log = logging.getLogger(__name__)

#: How many console / QEMU log lines travel with errors and GuestExit.
TAIL_LINES = 20
#: How far back from the end of the console a kernel's panic line is looked for.
PANIC_SCAN_LINES = 400

#: How often `wait_exit` looks whether a QEMU that said SHUTDOWN needs waking.
EXIT_SLICE = 0.1

#: QemuOptions fields a caller may pass through Machine(**options).
_OPTION_NAMES = {f.name for f in dataclasses.fields(QemuOptions)} - {
    "accel", "scenario", "extra_cmdline", "paused", "shared_ram", "ram_file", "firmware_dirs",
    "version_args"}


class Machine:
    """A QEMU x86-64 guest booted from an `Image` (or an image name/TOML path).

    :param accel: "auto" | "tcg" | "kvm", or a ready `AccelDecision`.
    :param scenario: appended to the kernel command line as ``scenario=N``.
    :param paused: start with vCPUs stopped (``-S``); `resume` or the gdbstub starts them.
    :param shared_ram: False, True/"file" (tmpfs file, see `ram_path`) or "memfd".
    :param run_dir: keep sockets and logs here (kept afterwards) instead of a
        private temporary directory (removed afterwards); ``keep_run_dir`` overrides.
    :param timeout: bound for launching (QEMU connecting its sockets, QMP handshake).
    :param modules: ``.ko`` files a Linux guest's /init loads (`kswgdb.qemu.guestcmd`).
    :param drives: checked ``--drive`` images (`kswgdb.qemu.drives`), after which
        ``extra_args`` (``--qemu-arg``) come last.
    :param options: any other `QemuOptions` field (machine, cpu, smp, memory, bios,
        gdb, extra_args, qemu_binary...) as keyword arguments. Without ``qemu_binary``
        the process's QEMU runs (`kswgdb.qemu.binary.selected`); either way its
        version is detected once and kept in `qemu`.
    """

    def __init__(
        self,
        image: Image | str | Path,
        *,
        accel: str | AccelDecision = "auto",
        scenario: int | None = None,
        extra_cmdline: str = "",
        paused: bool = True,
        shared_ram: bool | SharedRam = False,
        run_dir: str | Path | None = None,
        keep_run_dir: bool | None = None,
        timeout: float = 30.0,
        modules: Sequence[Path] = (),
        drives: Sequence[Drive] = (),
        **options: Any,
    ) -> None:
        self.image = image if isinstance(image, Image) else load_image(image)
        self._accel_request = accel
        self.scenario = scenario
        self.extra_cmdline = extra_cmdline
        self.paused = paused
        self.shared_ram: SharedRam = "file" if shared_ram is True else (shared_ram or None)
        self._run_dir_arg = run_dir
        self._keep_run_dir = keep_run_dir
        self.timeout = timeout
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise TypeError(f"Machine() got unknown option(s): {', '.join(sorted(unknown))}")
        self._options = options
        self.modules = tuple(modules)      # --module: put in a Linux guest's initramfs
        self.drives = tuple(drives)        # --drive: virtio disks (kswgdb.qemu.drives)

        self.accel_decision: AccelDecision | None = None
        self.qemu: QemuBinary | None = None   # detected at launch; its version decides quirks
        self.argv: list[str] = []
        self.run_dir: RunDir | None = None
        self.ram_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._qemu_log: IO[bytes] | None = None
        self._console: Console | None = None
        self._qmp: Qmp | None = None
        self._exit: GuestExit | None = None
        self._closed = False
        self.exit_nudge = ExitNudge()     # a QEMU stuck after SHUTDOWN (kswgdb.qemu.exitnudge)

    # -- context manager ---------------------------------------------------------

    def __enter__(self) -> Machine:
        self.launch()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- accessors ---------------------------------------------------------------

    @property
    def console(self) -> Console:
        """The serial console (launched machines only)."""
        if self._console is None:
            raise MachineError("machine not launched", argv=self.argv)
        return self._console

    @property
    def qmp(self) -> Qmp:
        """The QMP session (launched machines only)."""
        if self._qmp is None:
            raise MachineError("machine not launched", argv=self.argv)
        return self._qmp

    @property
    def gdb_socket(self) -> Path:
        """Unix socket of QEMU's gdbstub, for `RemoteClient.connect`."""
        if self.run_dir is None:
            raise MachineError("machine not launched", argv=self.argv)
        return self.run_dir.paths.gdb_sock

    @property
    def console_log(self) -> Path:
        """File with every console byte (gone after close unless the run dir is kept)."""
        if self.run_dir is None:
            raise MachineError("machine not launched", argv=self.argv)
        return self.run_dir.paths.console_log

    @property
    def pid(self) -> int | None:
        """QEMU's process id, while it has one."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """QEMU is alive (the guest may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def shutting_down(self) -> bool:
        """QEMU sent SHUTDOWN and is still alive: the guest has ended, QEMU is exiting.

        It answers no more QMP commands (`kswgdb.qemu.exitnudge`): send none.
        """
        return self._qmp is not None and self._qmp.count("SHUTDOWN") > 0 and self.running

    @property
    def guest_exit(self) -> GuestExit | None:
        """How the guest ended, once `wait_exit` (or `close`) saw it end."""
        return self._exit

    def wait_for(self, pattern: str, timeout: float, *, since: int = 0) -> Any:
        """Shortcut for ``console.wait_for``."""
        return self.console.wait_for(pattern, timeout, since=since)

    # -- launch ------------------------------------------------------------------

    def launch(self) -> None:
        """Start QEMU and connect console and QMP; on any failure nothing is left behind."""
        if self._proc is not None or self._closed:
            raise MachineError("a Machine launches once", argv=self.argv)
        try:
            self._launch()
        except BaseException as exc:
            self.close()
            if isinstance(exc, MachineError):
                raise
            if isinstance(exc, OSError):
                raise MachineStartError(f"could not launch QEMU: {exc}", argv=self.argv,
                                        console_tail=self._qemu_log_tail()) from exc
            raise

    def _detect_qemu(self) -> QemuBinary:
        """The QEMU to run (``qemu_binary=`` or the process's choice), version detected once."""
        explicit = self._options.get("qemu_binary")
        try:
            return qemu_binary.detect(explicit) if explicit else qemu_binary.selected()
        except KswError as exc:
            if explicit:
                raise MachineStartError(f"could not launch QEMU: {exc}", argv=[explicit]) from exc
            raise

    def _launch(self) -> None:
        self.qemu = self._detect_qemu()
        req = self._accel_request
        self.accel_decision = req if isinstance(req, AccelDecision) else decide(
            req, qemu_binary=self.qemu.path, version=self.qemu.banner)
        sweep_stale()
        self.run_dir = RunDir(self._run_dir_arg, keep=self._keep_run_dir)
        paths = self.run_dir.paths
        if self.shared_ram == "file":
            self.ram_path = self.run_dir.shared_ram_file()
        # Always -S: the guest must not run (and possibly exit) before QMP is up,
        # or a fast guest's exit would look like a failed launch. `paused=False`
        # is honoured below with a `cont` once everything is connected.
        # A Linux guest's command travels in the initramfs (kswgdb.qemu.guestcmd).
        # So do the user's modules; drives get their overlays in the run directory.
        extra, initrd = guestcmd.prepare(self.image.guest, self.image.initrd,
                                         self.extra_cmdline, paths.root, self.modules)
        extra_args = (*drive_args(self.drives, paths.root, self.qemu.path),
                      *self._options.get("extra_args", ()))
        opts = QemuOptions(
            accel=self.accel_decision.accel, scenario=self.scenario,
            extra_cmdline=extra, paused=True, initrd=initrd,
            shared_ram=self.shared_ram, ram_file=self.ram_path,
            **{**self._options, "qemu_binary": self.qemu.path, "extra_args": extra_args},
            firmware_dirs=self.qemu.firmware_dirs,
            version_args=self.qemu.quirks.tcg_args(gdbstub=self._options.get("gdb", True))
            if self.accel_decision.accel == "tcg" else (),
        )
        self.argv = build_argv(self.image, paths, opts)
        log.debug("launching %s", self.argv)

        con_listener = _listen(paths.console_sock)
        qmp_listener = _listen(paths.qmp_sock)
        try:
            self._qemu_log = open(paths.qemu_log, "wb")  # noqa: SIM115 - closed in close()
            self._proc = reaper.spawn(self.argv, stdout=self._qemu_log,
                                      stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self.timeout
            con_sock = self._accept(con_listener, deadline, "serial console")
            self._console = Console(con_sock, paths.console_log, argv=self.argv)
            qmp_sock = self._accept(qmp_listener, deadline, "QMP")
            left = max(deadline - time.monotonic(), 1.0)
            try:
                self._qmp = Qmp(qmp_sock, timeout=min(left, 10.0), argv=self.argv)
            except Exception as exc:
                # QEMU connects its chardevs before creating devices, so a bad
                # -device shows up here, as QEMU exiting during the QMP greeting.
                rc = _wait(self._proc, 2.0)
                if rc is not None:
                    reaper.unregister(self._proc)
                    raise self._exited_during_launch(rc, "during the QMP handshake") from exc
                raise MachineStartError(f"QMP handshake failed: {exc}", argv=self.argv,
                                        console_tail=self._qemu_log_tail()) from exc
            if not self.paused:
                self._cont()
        finally:
            for listener, path in ((con_listener, paths.console_sock),
                                   (qmp_listener, paths.qmp_sock)):
                listener.close()
                with contextlib.suppress(OSError):
                    path.unlink()

    def _accept(self, listener: socket.socket, deadline: float, what: str) -> socket.socket:
        """Accept QEMU's connection, failing fast if QEMU exits first."""
        assert self._proc is not None
        while True:
            ready, _, _ = select.select([listener], [], [], 0.02)
            if ready:
                sock, _ = listener.accept()
                return sock
            rc = self._proc.poll()
            if rc is not None:
                reaper.unregister(self._proc)
                raise self._exited_during_launch(rc, f"before connecting its {what} socket")
            if time.monotonic() > deadline:
                raise MachineStartError(
                    f"QEMU did not connect its {what} socket within {self.timeout:g}s",
                    argv=self.argv, console_tail=self._qemu_log_tail())

    def _exited_during_launch(self, rc: int, when: str) -> MachineStartError:
        """The error for a QEMU that died while launching; its last message goes in the text."""
        tail = self._qemu_log_tail()
        last = next((line for line in reversed(tail) if line.strip()), "")
        return MachineStartError(
            f"QEMU exited with status {rc} {when}" + (f": {last}" if last else ""),
            argv=self.argv, console_tail=tail)

    @property
    def qemu_log_path(self) -> Path | None:
        """QEMU's stdout and stderr (its run directory's ``qemu.log``), while the run lasts."""
        return self.run_dir.paths.qemu_log if self.run_dir is not None else None

    def qemu_log_tail(self) -> list[str]:
        """The last lines QEMU itself printed (an assertion before an abort, say)."""
        return self._qemu_log_tail()

    def _qemu_log_tail(self) -> list[str]:
        if self.run_dir is None:
            return []
        try:
            text = self.run_dir.paths.qemu_log.read_text(errors="replace")
        except OSError:
            return []
        return text.splitlines()[-TAIL_LINES:]

    def _tail(self) -> list[str]:
        """Console tail plus QEMU's own messages, for errors."""
        lines = self._console.tail(TAIL_LINES) if self._console is not None else []
        qlog = self._qemu_log_tail()
        return lines + ([f"[qemu] {line}" for line in qlog] if qlog else [])

    # -- running -----------------------------------------------------------------

    def resume(self) -> None:
        """Start (from ``-S``) or continue the vCPUs through QMP."""
        self._cont()

    def _cont(self) -> None:
        """QMP ``cont``, tolerating a guest that ends before QEMU's reply arrives.

        A guest such as the test kernel can run to its isa-debug-exit in well under
        a millisecond, and QEMU then closes QMP before sending ``cont``'s reply
        (``ExecInterruptedError: Disconnected``). That is the guest ending, not a
        failure: `wait_exit` reports how it ended. Only a QEMU still running after
        a failed ``cont`` is an error.
        """
        assert self._proc is not None
        try:
            self.qmp.cont()
        except MachineError:
            if self._proc.poll() is None and _wait(self._proc, 2.0) is None:
                raise

    def wait_exit(self, timeout: float) -> GuestExit:
        """Wait up to ``timeout`` seconds for the guest to end, and say how it ended.

        On timeout QEMU is left running (kind ``timeout``, with the last console
        lines), unless QEMU reports a stopped-for-good state (``internal-error``,
        ``guest-panicked``: kind ``crashed``). The caller decides whether to kill.
        """
        if self._exit is not None:
            return self._exit
        if self._proc is None:
            raise MachineError("machine not launched", argv=self.argv)
        try:
            rc = self._wait_process(timeout)
        except subprocess.TimeoutExpired:
            state = ""
            with contextlib.suppress(MachineError):
                state = "" if self.shutting_down else self.qmp.status()
            if state in ("internal-error", "guest-panicked", "shutdown"):
                return GuestExit("crashed", reason=f"QEMU run state {state}",
                                 lines=tuple(self.console.tail(TAIL_LINES)))
            return GuestExit("timeout", reason=f"still running after {timeout:g}s",
                             lines=tuple(self.console.tail(TAIL_LINES)))
        return self._finish(rc)

    def _wait_process(self, timeout: float) -> int:
        """QEMU's exit status within ``timeout`` s, waking an exit stuck after SHUTDOWN."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            self.exit_nudge.check(self._proc, self.shutting_down)
            left = deadline - time.monotonic()
            try:
                return self._proc.wait(max(0.0, min(left, EXIT_SLICE)))
            except subprocess.TimeoutExpired:
                if left <= EXIT_SLICE:
                    raise

    def _finish(self, rc: int) -> GuestExit:
        """QEMU has exited: collect the last events and console bytes, classify."""
        assert self._proc is not None
        reaper.unregister(self._proc)
        shutdown = None
        if self._qmp is not None:
            self._qmp.wait_disconnected(2.0)
            shutdown = self._qmp.shutdown_event()
        lines: list[str] = []
        panic = None
        if self._console is not None:
            self._console.wait_closed(2.0)
            lines = self._console.tail(TAIL_LINES)
            # The panic line comes before the panic's own stack dump: look further back.
            panic = kernel_panic_line(self._console.tail(PANIC_SCAN_LINES))
        self._exit = decode_exit(
            rc, shutdown, lines, panic=panic,
            debug_exit_via_shutdown=self.qemu is not None
            and self.qemu.quirks.debug_exit_via_shutdown)
        return self._exit

    def kill(self) -> GuestExit:
        """SIGKILL QEMU now and reap it (kind ``killed``)."""
        if self._proc is None:
            raise MachineError("machine not launched", argv=self.argv)
        if self._exit is None:
            with contextlib.suppress(OSError):
                self._proc.kill()
            return self._finish(self._proc.wait(10))
        return self._exit

    def close(self, timeout: float = 5.0) -> None:
        """Stop QEMU (QMP quit, then SIGTERM, then SIGKILL, bounded) and clean up.

        Idempotent and safe on a half-launched machine; never raises.
        """
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc is not None and self._exit is None:
            if proc.poll() is None and self._qmp is not None and self._qmp.connected:
                self._qmp.quit(timeout / 4)
            rc = _wait(proc, timeout / 4)
            if rc is None:
                with contextlib.suppress(OSError):
                    proc.terminate()
                rc = _wait(proc, timeout / 4)
            if rc is None:
                with contextlib.suppress(OSError):
                    proc.kill()
                rc = _wait(proc, timeout)
            if rc is not None:
                with contextlib.suppress(Exception):
                    self._finish(rc)
            reaper.unregister(proc)
        if self._qmp is not None:
            self._qmp.close()
        if self._console is not None:
            self._console.close()
        if self._qemu_log is not None:
            with contextlib.suppress(OSError):
                self._qemu_log.close()
        if self.run_dir is not None:
            self.run_dir.remove()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self.running else "idle")
        accel = self.accel_decision.accel if self.accel_decision else "?"
        return f"<Machine {self.image.name} {accel} pid={self.pid} {state}>"


def _listen(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` (inside the 0700 run directory)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None

