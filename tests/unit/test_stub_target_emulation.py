"""StubTarget leaves a breakpoint by emulation, or by a real step when it must (fake stub)."""

from __future__ import annotations

from kswgdb.gdbstub.fake import FakeStub, ScriptedStop
from kswgdb.run.stub_target import StubTarget
from tests.unit.gdbstub_support import connected, xml_files

CODE = 0xFFFFFFFF81000000
STACK = 0xFFFFC90000004000
RBP = STACK + 0x140
STORE = bytes.fromhex("48c745f8efbeadde")          # movq $0xffffffffdeadbeef, -8(%rbp)
FAR_STORE = bytes.fromhex("48c70425000010000100000000")  # movq $1, 0x100000 (absolute)


def fake(code: bytes, *after: ScriptedStop) -> FakeStub:
    regs = {"rip": CODE, "rsp": STACK + 0x100, "rbp": RBP, "eflags": 0x246,
            "gs_base": 0xFFFF888007C00000}
    return FakeStub(
        xml_files(),
        memory={CODE: code + b"\x90" * 16, STACK: bytes(0x1000), 0x100000: bytes(16)},
        registers={1: regs},
        stops=[ScriptedStop("T05thread:01;", registers={"rip": CODE}), *after],
    )


def stopped_on_breakpoint(client) -> StubTarget:
    target = StubTarget(client)
    target.set_breakpoint(CODE)
    target.resume()
    stop = target.wait_stop(5)
    assert stop is not None and stop.kind == "break" and stop.pc == CODE
    return target


def test_the_instruction_is_emulated_and_its_effect_sent_with_the_resume():
    stub = fake(STORE)
    with connected(stub) as client:
        target = stopped_on_breakpoint(client)
        target.resume()
        assert target.wait_stop(0.2) is None            # the guest runs on
        client.interrupt()
        client.wait_stop(5)
    assert stub.steps == []
    assert target.emulated == 1 and target.steps == 0
    assert stub._read(RBP - 8, 8) == bytes.fromhex("efbeaddeffffffff")
    assert stub.regs[1]["rip"] == CODE + len(STORE)


def test_a_write_on_a_live_watchpoint_is_left_to_a_real_step():
    stub = fake(STORE, ScriptedStop("T05thread:01;", registers={"rip": CODE + len(STORE)}))
    with connected(stub) as client:
        target = stopped_on_breakpoint(client)
        target.set_watchpoint(RBP - 8, 8)
        target.resume()
        client.interrupt()
        client.wait_stop(5)
    assert stub.steps == [1]                            # the real CPU must fire the watch
    assert target.emulated == 0 and target.steps == 1
    assert target.refusals == {"write on a watchpoint": 1}
    assert stub._read(RBP - 8, 8) == bytes(8)           # nothing written behind its back


def test_a_write_away_from_the_stack_is_left_to_a_real_step():
    stub = fake(FAR_STORE, ScriptedStop("T05thread:01;",
                                        registers={"rip": CODE + len(FAR_STORE)}))
    with connected(stub) as client:
        target = stopped_on_breakpoint(client)
        target.resume()
        client.interrupt()
        client.wait_stop(5)
    assert stub.steps == [1] and target.emulated == 0
    assert target.refusals == {"write away from the stack": 1}


def test_without_emulation_every_breakpoint_is_stepped():
    stub = fake(STORE, ScriptedStop("T05thread:01;", registers={"rip": CODE + len(STORE)}))
    with connected(stub) as client:
        target = StubTarget(client, emulate=False)
        target.set_breakpoint(CODE)
        target.resume()
        target.wait_stop(5)
        target.resume()
        client.interrupt()
        client.wait_stop(5)
    assert stub.steps == [1] and target.emulated == 0 and target.steps == 1


def test_an_access_watch_goes_out_with_the_resume_and_its_stop_says_access():
    """Release by check (kswgdb.watch.checkrelease): ``Z4`` queued into the resume's
    write, an ``awatch`` stop handed to the engine as an access, ``z4`` on removal."""
    after = ScriptedStop(f"T05thread:01;awatch:{RBP - 8:x};", registers={"rip": CODE + 4})
    stub = fake(STORE, after)
    with connected(stub) as client:
        target = stopped_on_breakpoint(client)
        target.set_watchpoint(RBP - 8, 8, "access")
        assert (4, RBP - 8, 8) not in stub.breakpoints        # queued, not sent alone
        target.resume()                                       # the store is on the watch:
        stop = target.wait_stop(5)                            # stepped for real, not emulated
        assert stop is not None and stop.watch_access == "access" and stop.watch_addr == RBP - 8
        assert (4, RBP - 8, 8) in stub.breakpoints
        assert target.refusals == {"write on a watchpoint": 1}
        target.clear_watchpoint(RBP - 8, 8, "access")
        target.flush()
        assert (4, RBP - 8, 8) not in stub.breakpoints


def test_reads_asked_with_the_resume_share_its_write():
    stub = fake(STORE)
    with connected(stub) as client:
        target = stopped_on_breakpoint(client)
        got = []
        target.set_watchpoint(RBP - 0x10, 8, "access")
        target.read_with_resume([(RBP - 8, 8), (CODE, 2)], got.append)
        sent = []
        orig = client.pipeline
        client.pipeline = lambda payloads, timeout=None: sent.append(payloads) or orig(payloads)
        target.resume()
        client.interrupt()
        client.wait_stop(5)
    assert got == [[bytes(8), STORE[:2]]]
    # (the emulator's own first read of the code went before, with the queued Z4)
    assert sent[-1][:2] == [f"m{RBP - 8:x},8", f"m{CODE:x},2"] and sent[-1][-1] == "c"
    assert (4, RBP - 0x10, 8) in stub.breakpoints
