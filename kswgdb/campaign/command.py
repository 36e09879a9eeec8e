"""`kswgdb campaign`: the command (`cmd_campaign`; its arguments are in `args`).

Bad input is found before any guest starts (exit 2): the campaign's own numbers,
then the run template through `kswgdb.run.prepare` (the same checks as `kswgdb
run`), then the directory. The summary goes to stdout and the directory.
"""

from __future__ import annotations

import argparse
import sys

from kswgdb.campaign import options as campaign_options
from kswgdb.campaign.directory import CampaignDir
from kswgdb.campaign.runner import Campaign
from kswgdb.campaign.summary import render_summary
from kswgdb.campaign.view import LiveView, PlainView
from kswgdb.render.console import output_console
from kswgdb.run.prepare import prepare


def cmd_campaign(args: argparse.Namespace, argv: tuple[str, ...] = ()) -> int:
    opts = campaign_options.campaign_options_from_args(args, argv)
    campaign_options.check(opts)
    plan = prepare(opts.run)          # every check `kswgdb run` makes, nothing started
    plan.close()
    opts.run.image = str(plan.image.path)   # replay lines name the image exactly
    out, err = output_console(), output_console(stderr=True)
    pool = _cluster_pool(opts, plan, err) if opts.cluster else None
    directory = CampaignDir.create(opts.directory)
    directory.write_command(opts.argv)
    err.print(f"[dim]campaign directory: {directory.path}", soft_wrap=True)
    view = LiveView(err) if err.is_terminal else PlainView(sys.stderr)
    campaign = Campaign(opts, directory, on_progress=view.progress,
                        on_run_end=view.run_ended, pool=pool)
    try:
        with view:
            status = campaign.run()
    except (KeyboardInterrupt, SystemExit):
        out.print(render_summary(campaign.summary))
        err.print(f"[dim]partial summary: {directory.path / 'summary.json'}", soft_wrap=True)
        raise
    out.print(render_summary(campaign.summary))
    for sig in campaign.summary["signatures"]:
        out.print(f"first example of {sig['id']} (run {sig['first']['run']}, "
                  f"seed {sig['first']['seed']}):", markup=False)
        out.print(sig["first"]["panel"], markup=False, highlight=False, end="")
    out.print(f"[dim]campaign directory: {directory.path} (summary.json, summary.txt, "
              "replay.txt, runs/)", soft_wrap=True)
    return status


def _cluster_pool(opts, plan, err):
    """The cluster's pool (`BadInput` if no scheduler answers), the image shipped to it."""
    from kswgdb.campaign.cluster import ClusterPool
    from kswgdb.campaign.shipping import parcel_of

    pool = ClusterPool(opts.cluster, parcel_of(plan.image, plan.additions), opts.cluster_timeout)
    sent = pool.shipment
    err.print(f"[dim]image {plan.image.name}: {len(pool.parcel.hashes())} file(s) by sha256, "
              f"{sent.files} sent to the cluster ({sent.bytes / 2**20:.1f} MiB), "
              f"{pool.workers} worker(s)", soft_wrap=True)
    return pool
