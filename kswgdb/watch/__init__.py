"""The KStackWatch policy: what to watch, when to arm and disarm, what a hit is.

Imports only `kswgdb.symbols` (and `errors`, `image`): never `qemu` or `gdbstub`.
It drives any `target.Target` (a fake in unit tests, `kswgdb.run.stub_target` for real).

- `config`       the KStackWatch config string (`fn= fo= so= wl= dp= mw= ph=`)
- `resolve`      a config against the kernel's symbols: `ResolvedWatch` -> `ArmSpec`
- `readrelease`  which releases a read watchpoint can see (only with release_by_read)
- `checkrelease` where a canary's own check read sees its release (release_by_check)
- `checks`       stack reach and alignment checks of a resolved watch
- `spec`         `ArmSpec`: everything the engine needs to arm one config
- `scenarios`    the test kernel's scenario watches
- `engine`       `Engine`: stops in, arming/disarming/hits out
- `frames`       live frames per task; `slots`: the watchpoint slot pool
- `hitbuild`     a `Hit` assembled from a watch stop; the frame-pointer backtrace walk
- `hits`         `Hit`, `EventLog` (JSONL, 0600; run id and time on every event)
- `eventschema`  the event log's JSON Schema (package data) and version (docs/events.md)
- `guest`, `layout`  guest-kernel knowledge: current task, stack bounds, canary, per flavour
- `modules`      Linux module watches and symbols
- `kaslr`        where a KASLR kernel runs (the slide, found at its entry point), and
                 `kernelmap`: its physical<->virtual map, for polls; `kaslr_running`:
                 the slide of a kernel that booted long ago (attach)
- `loststops`    the watch stops QEMU 7.2 loses on another vCPU, found and collected
- `unarmed`      one warning line per watch that was never armed (exit status 4)
- `symbolize`    addresses -> names, source lines, writer instructions
- `target`       the `Target` protocol, `Stop`, `Registers`
"""
