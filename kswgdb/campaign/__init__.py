"""`kswgdb campaign`: the same watched run in many guests until it is caught, deduplicated.

A thin driver over `kswgdb.run` (each run is a `WatchSession` over a `Rig`, in its
own process): nothing here wires a guest.

- `options`    `CampaignOptions` (the run template, jobs, stop conditions) and its checks
- `signature`  a hit's dedup `Signature` (writer function+offset, victim, target, config)
- `worker`     one run in a child process: seed, event log, outcome as plain data
- `pool`       up to J child processes at once (forkserver), interrupted or killed by id
- `cluster`    the same on a Dask cluster (`--cluster`): tasks, live hits, stop events
- `shipping`   the image, --module and --drive files to cluster workers by content hash
- `peers`      a file a worker lacks and the campaign did not send, from a worker holding it
- `joiner`     a Dask worker plugin: each worker, joining later too, fills its cache at once
- `cores`      a frozen run's vmcore from a cluster worker, fetched in chunks when wanted
- `child`      one run as a plain subprocess (what a cluster worker starts)
- `tally`      outcomes folded into counts and per-signature records (the summary)
- `directory`  the campaign directory: per-run logs, summary.json/.txt, replay lines
- `replay`     the `kswgdb run ... --seed S` line that replays one run exactly
- `runner`     `Campaign.run`: launch, collect, stop (runs, hits, budget, Ctrl-C)
- `view`       progress: a rich live view on a terminal, plain lines in a pipe
- `args`       the subcommand's arguments (the CLI's parser imports only this)
- `command`    the CLI glue: options -> checks -> campaign -> render -> status
- `panel`      a hit's panel as text (kept in the summary)
- `summary`    the summary as JSON (schema: docs/campaign-summary.md) and as tables
"""
