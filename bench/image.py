"""Image build: what the pipeline spends beyond the cloud's own delays.

One real build (devstackgate.image.run: base image and flavor, template boot,
SSH, a setup script, sync, snapshot, canary boot through the launch code,
promotion, retention) against a local cloud (a child process, so its threads
do not share our interpreter) whose boot and snapshot delays are fixed.  The
reference is what the cloud itself makes the build wait: the template's boot
delay, the snapshot delay and the canary's boot delay.  Everything else (polls
that overshoot, SSH waits, API calls, key generation, the database) is the
pipeline's overhead.  Goal: under 10 % of the reference.

The build runs with the product's defaults (poll-interval, ssh-connect-timeout,
the image-build poll keys) except what a local cloud needs: its SSH port, no
API rate limit (api-rate 0, a local cloud has none) and private paths.
"""

import contextlib
import logging
import os
import time

import yaml

from bench.common import Goal, Row

NAME = 'image'
BASE_IMAGE = 'Ubuntu 12.04 LTS'


class _Phases(logging.Handler):
    """Timestamps of the builder's log lines, to tell where the time went."""

    MARKS = (
        ('building image', 'started'),
        ('template ACTIVE', 'template active'),
        ('running ', 'setup started'),
        ('snapshotting as', 'snapshot requested'),
        ('snapshot active', 'snapshot active'),
        ('booting a canary', 'canary requested'),
        ('waiting for SSH', 'canary active'),
        ('passed', 'canary passed'),
        ('is now the current image', 'promoted'),
    )

    def __init__(self):
        super().__init__(logging.INFO)
        self.seen = []

    def emit(self, record):
        msg = record.getMessage()
        for needle, name in self.MARKS:
            if needle in msg and name not in dict(self.seen):
                if name == 'canary active' and 'canary requested' not in dict(self.seen):
                    continue
                self.seen.append((name, time.monotonic()))
                break


def _config(tmp, clouds_yaml, db_url):
    (tmp / 'cache-it.sh').write_text('set -eu\nmkdir -p cache\necho built > cache/stamp\n')
    data = {
        'database': db_url,
        'ssh-private-key': str(tmp / 'keys' / 'id_rsa'),
        'providers': [{
            'name': 'bench', 'cloud': 'bench', 'ssh-port': 2222, 'api-rate': 0,
            'boot-timeout': 120, 'max-servers': 10,
            'images': [{'name': 'precise', 'base-image': BASE_IMAGE, 'min-ram': 512,
                        'min-ready': 1, 'setup': ['cache-it.sh']}],
        }],
    }
    path = tmp / 'devstack-gate.yaml'
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _base_dir(tmp):
    root = tmp / 'base-image'
    (root / 'etc').mkdir(parents=True, exist_ok=True)
    (root / 'etc' / 'issue').write_text('Ubuntu 12.04 LTS localcloud\n')
    return str(root)


def build_once(ctx, boot_delay, snapshot_delay, tmp):
    """One real build; (seconds, phases, row, config)."""
    import vmdatabase
    from devstackgate import cloud, config as config_mod, image, ssh
    from localcloud.testing import local_clouds_subprocess

    tmp.mkdir(parents=True, exist_ok=True)
    cloud_cfg = {'clouds': [{
        'name': 'bench', 'seed': 11, 'images': [{'name': BASE_IMAGE, 'directory': _base_dir(tmp)}],
        'faults': {'boot-delay': boot_delay, 'snapshot-delay': snapshot_delay}}]}
    with contextlib.ExitStack() as stack:
        clouds = stack.enter_context(local_clouds_subprocess(cloud_cfg, tmp_dir=str(tmp)))
        db_url = 'sqlite:///%s' % (tmp / 'image.db')
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=clouds.clouds_yaml)
        path = _config(tmp, clouds.clouds_yaml, db_url)
        config = config_mod.load(path, environ=env)
        provider = config.provider('bench')
        db = vmdatabase.Database(db_url).upgrade()
        ssh.ensure_private_key(config.ssh_private_key)      # the pool's key: made once, not timed
        adapter = cloud.connect(provider, environ=env)
        adapter.list_flavors()                              # the session's token: not timed
        phases = _Phases()
        logger = logging.getLogger()
        old_level = logger.level
        logger.addHandler(phases)
        logger.setLevel(logging.INFO)
        try:
            started = time.monotonic()
            outcome = image.run(config, 'bench', 'precise', db=db, adapter=adapter)
            seconds = time.monotonic() - started
        finally:
            logger.removeHandler(phases)
            logger.setLevel(old_level)
        row = outcome['precise']
        if not isinstance(row, vmdatabase.Image):
            raise RuntimeError('the build failed: %s' % (row,))
        marks = [('started', started)] + [m for m in phases.seen if m[0] != 'started']
        steps = {'%s -> %s' % (a[0], b[0]): round(b[1] - a[1], 3)
                 for a, b in zip(marks, marks[1:])}
        return seconds, steps, row, config


def run(ctx):
    import pathlib
    boot = ctx.pick(0.3, 3.0)
    snap = ctx.pick(0.3, 3.0)
    tmp = pathlib.Path(ctx.workdir) / 'image'
    seconds, steps, row, config = build_once(ctx, boot, snap, tmp)
    delays = boot + snap + boot             # template boot, snapshot, canary boot
    overhead = seconds - delays
    case = 'boot %gs snapshot %gs' % (boot, snap)
    detail = {'steps_s': steps, 'image': row.name,
              'poll_interval': config.poll_interval,
              'image_poll': {k: getattr(config, k) for k in
                             ('image_poll_min', 'image_poll_fraction') if hasattr(config, k)},
              'delays': {'template boot': boot, 'snapshot': snap, 'canary boot': boot}}
    return [
        Row(NAME, case, 'build total', seconds, 's', reference=delays,
            reference_name='s configured delays', detail=detail),
        Row(NAME, case, 'overhead beyond the delays', overhead, 's', reference=delays,
            reference_name='s configured delays',
            goal=Goal('<', 0.10, of='ratio', text='overhead < 10 % of the delays'),
            detail=detail),
    ]
