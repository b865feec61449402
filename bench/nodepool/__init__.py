"""Nodepool 11 beside devstack-gate on the local cloud (on demand: ``--only nodepool``).

Not in the default ``python -m bench`` run and never in the test suite's: it
installs Nodepool 11 into its own ignored virtualenv (``.bench-nodepool/``,
pip from the package index) and Debian's ZooKeeper (apt-get, if missing), and
runs a private ZooKeeper with throwaway TLS certificates, as Nodepool 11
requires.

Per case (boot delay D, pool size N) and repetition, three runs, each on a
fresh local cloud with the same boot delay and no cloud-side limit (each side
spaces its calls at its own default rate, 1 s for both), the order rotated
each repetition: devstack-gate (one ``devstack-vm-launch.py`` run, default
settings), Nodepool at its defaults (host-key checking on) and Nodepool with
``host-key-checking: false``.  Figures, as ratios us / Nodepool:

- time to N ready nodes from the process start (the N-th node's own ready
  time: our database row, Nodepool's ZooKeeper node);
- API calls per ready node, by kind, from the cloud's own counts when the
  pool is full;
- request-to-node from the ready pool: a whole ``devstack-vm-fetch.py``
  process and an in-process claim against Nodepool's NodeRequest, submitted to
  fulfilled (seen by a ZooKeeper watch), each run.

Every Nodepool setting beyond pointing it at the cloud is stated in the
rows' detail with the reason (``bench.nodepool.config.stated_settings``).
"""

import os
import time

from bench.nodepool import config as cfg
from bench.nodepool import figures, install
from bench.nodepool.install import ToolMissing  # noqa: F401 (the one-line failure)

NAME = 'nodepool'
#: The short profile (a check that both sides run) and the full one (the figures).
SHORT = {'delays': (2.0,), 'nodes': (10,), 'repetitions': 1, 'requests': 3}
FULL = {'delays': (2.0, 10.0), 'nodes': (10, 30, 50), 'repetitions': 3, 'requests': 4}


def profile(ctx):
    return FULL if ctx.full else SHORT


def run(ctx):
    from bench.nodepool import sides
    p = profile(ctx)
    install.ensure_java()
    install.ensure_zookeeper(say=sides.say)
    venv = install.ensure_nodepool(say=sides.say)
    ssh_port = cfg.node_ssh_port()
    settings = {figures.OURS: cfg.our_settings(ssh_port),
                figures.NODEPOOL: cfg.stated_settings(True, ssh_port),
                figures.NODEPOOL_NO_HKC: cfg.stated_settings(False, ssh_port)}
    settings[figures.NODEPOOL]['install: %s' % ' '.join(sorted(install.UNDECLARED))] = \
        '; '.join(install.UNDECLARED.values())
    settings[figures.NODEPOOL_NO_HKC].update(
        {k: v for k, v in settings[figures.NODEPOOL].items() if k.startswith('install')})
    results = []
    for delay in p['delays']:
        for nodes in p['nodes']:
            for rep in range(p['repetitions']):
                for side in figures.run_order(rep):
                    results.append(_one(ctx, side, delay, nodes, rep, p['requests'], venv,
                                        ssh_port))
    return figures.rows(results, settings)


def _one(ctx, side, delay, nodes, rep, requests, venv, ssh_port):
    from bench.nodepool import sides
    started = time.perf_counter()
    # our side takes a warm-up node, then `requests` by fetch and as many by claim
    requests = min(requests, (nodes - 1) // 2)
    if side == figures.OURS:
        got = sides.ours_fill(ctx.workdir, delay, nodes, requests, ssh_port)
        extra = 'fetch p50 %.0f ms, claim p50 %.2f ms' % (
            sides.median(got['fetches']) * 1000.0 if got['fetches'] else float('nan'),
            sides.median(got['claims']) * 1000.0 if got['claims'] else float('nan'))
    else:
        got = sides.nodepool_fill(ctx.workdir, venv, delay, nodes,
                                  side == figures.NODEPOOL, requests, ssh_port)
        extra = 'NodeRequest p50 %.0f ms' % (sides.median(got['requests']) * 1000.0
                                             if got['requests'] else float('nan'))
    got.update(side=side, delay=delay, nodes=nodes, rep=rep)
    sides.say('D=%gs N=%d rep %d %s: filled in %.1f s, %.1f API calls per node, %s '
              '(run %.0f s)' % (delay, nodes, rep, side, got['fill'],
                                figures.calls_per_node(got['calls'], nodes), extra,
                                time.perf_counter() - started))
    _cleanup(ctx.workdir)
    return got


def _cleanup(workdir):
    """The runs' directories (clouds' state is gone already): keep the disk flat."""
    import shutil
    for name in os.listdir(workdir):
        if name.startswith(('nodepool-', 'ours-')):
            shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
