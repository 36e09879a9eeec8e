"""Exit decoding: QEMU status + last SHUTDOWN event -> how the guest ended."""

from __future__ import annotations

import pytest

from kswgdb.qemu.exitstatus import debug_exit_status, decode_exit, kernel_panic_line


def _shutdown(reason: str, guest: bool = True) -> dict:
    return {"event": "SHUTDOWN", "data": {"guest": guest, "reason": reason}}


@pytest.mark.parametrize("scenario", range(8))
def test_scenario_codes(scenario: int) -> None:
    code = 0x10 + scenario
    status = debug_exit_status(code)
    assert status == 33 + 2 * scenario
    gone = decode_exit(status, None, ["KSWTEST verdict"])
    assert gone.kind == "debug-exit"
    assert gone.code == code
    assert gone.status == status
    assert gone.lines == ("KSWTEST verdict",)


def test_panic_and_no_scenario_codes() -> None:
    assert debug_exit_status(0x3E) == 125
    assert decode_exit(125).code == 0x3E
    assert debug_exit_status(0x3D) == 123
    assert decode_exit(123).code == 0x3D


def test_debug_exit_code_zero_is_status_one() -> None:
    gone = decode_exit(1)
    assert (gone.kind, gone.code) == ("debug-exit", 0)


def test_triple_fault() -> None:
    gone = decode_exit(0, _shutdown("guest-reset"))
    assert gone.kind == "triple-fault"
    assert gone.reason == "guest-reset"
    assert gone.code is None


def test_guest_poweroff() -> None:
    assert decode_exit(0, _shutdown("guest-shutdown")).kind == "shutdown"


def test_guest_panic_event() -> None:
    assert decode_exit(0, _shutdown("guest-panic")).kind == "panic"


@pytest.mark.parametrize("reason", ["host-qmp-quit", "host-signal", "host-qmp-system-reset"])
def test_host_initiated(reason: str) -> None:
    gone = decode_exit(0, _shutdown(reason, guest=False))
    assert (gone.kind, gone.reason) == ("killed", reason)


def test_killed_by_signal() -> None:
    gone = decode_exit(-9)
    assert gone.kind == "killed"
    assert "SIGKILL" in gone.reason


def test_even_status_without_event_is_a_crash() -> None:
    assert decode_exit(2).kind == "crashed"
    assert decode_exit(0).kind == "crashed"


def test_str() -> None:
    assert str(decode_exit(67)) == "debug-exit code=0x21 status=67 reason=isa-debug-exit"


PANIC_CONSOLE = [
    "[    3.412345] lkdtm: Performing direct entry CORRUPT_STACK",
    "[    3.420001] Kernel panic - not syncing: stack-protector: Kernel stack is corrupted "
    "in: lkdtm_CORRUPT_STACK+0x46/0x4b [lkdtm]",
    "[    3.421000] CPU: 1 PID: 93 Comm: sh Tainted: G           OE      6.1.0-56-cloud-amd64",
    "[    3.422000] Kernel Offset: disabled",
]


def test_linux_panic_line_turns_a_reboot_into_a_panic() -> None:
    """panic=-1 reboots; under -no-reboot QEMU reports guest-reset: the console says why."""
    gone = decode_exit(0, _shutdown("guest-reset"), PANIC_CONSOLE)
    assert gone.kind == "panic" and gone.reason == "guest-reset"
    assert gone.panic == ("Kernel panic - not syncing: stack-protector: Kernel stack is "
                          "corrupted in: lkdtm_CORRUPT_STACK+0x46/0x4b [lkdtm]")
    assert str(gone).startswith("panic status=0 reason=guest-reset: Kernel panic - not syncing")


def test_panic_line_given_from_further_back_than_the_tail() -> None:
    gone = decode_exit(0, _shutdown("guest-reset"), ["Kernel Offset: disabled"],
                       panic="Kernel panic - not syncing: Fatal exception")
    assert (gone.kind, gone.panic) == ("panic", "Kernel panic - not syncing: Fatal exception")


def test_a_panic_line_does_not_hide_a_kill_or_a_debug_exit() -> None:
    assert decode_exit(-9, None, PANIC_CONSOLE).kind == "killed"
    assert decode_exit(0, _shutdown("host-qmp-quit", guest=False), PANIC_CONSOLE).kind == "killed"
    assert decode_exit(0x3E * 2 + 1, None, PANIC_CONSOLE).kind == "debug-exit"


def test_kernel_panic_line_absent() -> None:
    assert kernel_panic_line(["Oops: 0000 [#1] SMP", "Call Trace:"]) is None
    assert decode_exit(0, _shutdown("guest-reset"), ["Call Trace:"]).kind == "triple-fault"
