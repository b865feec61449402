"""Helpers for tests that run the product's scripts against local clouds and a real database."""

import os
import subprocess
import sys
import time

import yaml

import vmdatabase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_IMAGE = 'Ubuntu 12.04 LTS'


def cloud_config(name, base_dir, **overrides):
    """One local cloud's config: seeded, quick boots, a base image from base_dir."""
    faults = dict({'boot-delay': 0.05}, **overrides.pop('faults', {}))
    config = {'name': name, 'seed': 11,
              'images': [{'name': BASE_IMAGE, 'directory': base_dir}],
              'faults': faults}
    config.update(overrides)
    return config


def make_base_dir(tmp_path):
    root = tmp_path / 'base-image'
    (root / 'etc').mkdir(parents=True, exist_ok=True)
    (root / 'etc' / 'issue').write_text('Ubuntu 12.04 LTS localcloud\n')
    return str(root)


class Pool:
    """A product configuration over running local clouds and a database."""

    def __init__(self, tmp_path, clouds, db_url, providers, **settings):
        self.tmp_path = tmp_path
        self.clouds = clouds
        self.db_url = db_url
        self.config_path = str(tmp_path / 'devstack-gate.yaml')
        data = {
            'database': db_url,
            'ssh-private-key': str(tmp_path / 'keys' / 'id_rsa'),
            'poll-interval': 0.1,
            'launch-poll-interval': 0.1,
            'launch-deadline': 60,
            'ssh-connect-timeout': 2,
            'fetch-poll': 0.05,
            'providers': providers,
        }
        data.update(settings)
        self.data = data
        self.write()

    def write(self):
        with open(self.config_path, 'w') as f:
            yaml.safe_dump(self.data, f)

    @property
    def db(self):
        return vmdatabase.Database(self.db_url).upgrade()

    def env(self, **extra):
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=self.clouds.clouds_yaml,
                   DEVSTACK_GATE_CONFIG=self.config_path, PYTHONUNBUFFERED='1')
        env.update(extra)
        return env

    def command(self, script, *args):
        path = os.path.join(ROOT, script)
        return ([sys.executable, path] if script.endswith('.py') else [path]) + list(args)

    def run(self, script, *args, timeout=180, env=None):
        return subprocess.run(self.command(script, *args), capture_output=True, text=True,
                              env=self.env(**(env or {})), timeout=timeout, cwd=str(self.tmp_path))

    def popen(self, script, *args, env=None):
        return subprocess.Popen(self.command(script, *args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.env(**(env or {})),
                                cwd=str(self.tmp_path))

    def seed_base_images(self, provider, label, cloud=None):
        """Record the cloud's base image as the label's current image (as a build would)."""
        handle = self.clouds[cloud or provider]
        (image,) = [i for i in handle.images() if i['name'] == BASE_IMAGE]
        return self.db.transact(lambda s: s.create_image(
            provider, label, state='ready', name=BASE_IMAGE, external_id=image['id']))

    def nodes(self, **filters):
        return self.db.transact(lambda s: s.nodes(**filters))

    def live_servers(self, cloud):
        """Servers the cloud still lists (not deleted, or lingering)."""
        return [s for s in self.clouds[cloud].servers() if not s['deleted'] or s['lingering']]

    def wait_for(self, predicate, timeout=30, interval=0.1, what='condition'):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError('timed out after %s s waiting for %s' % (timeout, what))


def provider(name, cloud=None, **overrides):
    images = overrides.pop('images', None) or [
        {'name': 'precise', 'base-image': BASE_IMAGE, 'min-ram': 512, 'min-ready': 2}]
    data = {'name': name, 'cloud': cloud or name, 'ssh-port': 2222, 'api-rate': 0,
            'api-backoff': 0.05, 'api-timeout': 20, 'boot-timeout': 30, 'max-servers': 10,
            'images': images}
    data.update(overrides)
    return data
