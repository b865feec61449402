"""Fixtures for the local cloud's own tests (and an example for others).

``cloud`` is one in-process cloud named "local" with a seeded generator, a
short boot delay and a base image seeded from a directory holding
``etc/issue``; ``make_clouds(config)`` starts any other configuration for the
duration of the test.  Everything is torn down after the test.
"""

import contextlib
import functools
import logging

import pytest
from novaclient import api_versions

from localcloud.testing import (SSHKey, local_clouds, local_clouds_subprocess,
                               wait_for_server)

BASE_IMAGE = "Ubuntu 12.04 LTS"


@pytest.fixture(autouse=True)
def _quiet_paramiko():
    logging.getLogger("paramiko").setLevel(logging.WARNING)


@pytest.fixture
def base_image_dir(tmp_path):
    root = tmp_path / "base-image"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "issue").write_text("Ubuntu 12.04 LTS localcloud\n")
    return str(root)


@pytest.fixture
def cloud_config(base_image_dir):
    """cloud_config(name="local", **overrides) -> one cloud's config mapping
    (seeded, boot-delay 0.05 s, base image from ``base_image_dir``)."""
    return functools.partial(_cloud_config, base_image_dir)


def _cloud_config(base_image_dir, name="local", **overrides):
    faults = overrides.pop("faults", {})
    config = {
        "name": name, "seed": 7,
        "images": [{"name": BASE_IMAGE, "directory": base_image_dir,
                    "properties": {"os_distro": "ubuntu"}}],
        "faults": dict({"boot-delay": 0.05}, **faults),
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_clouds(tmp_path):
    """make_clouds(config_dict, subprocess=False) -> LocalClouds."""
    with contextlib.ExitStack() as stack:
        def make(config, subprocess=False):
            factory = local_clouds_subprocess if subprocess else local_clouds
            return stack.enter_context(factory(config, tmp_dir=str(tmp_path)))
        yield make


@pytest.fixture
def localcloud(make_clouds, cloud_config):
    return make_clouds({"clouds": [cloud_config()]})


@pytest.fixture
def cloud(localcloud):
    return localcloud["local"]


@pytest.fixture
def nova(cloud):
    return cloud.nova("2.1")


@pytest.fixture
def glance(cloud):
    return cloud.glance()


@pytest.fixture
def base_image(glance):
    return next(i for i in glance.images.list() if i.name == BASE_IMAGE)


@pytest.fixture
def ssh_key(tmp_path):
    return SSHKey(str(tmp_path))


@pytest.fixture
def keypair(nova, ssh_key):
    return nova.keypairs.create("testkey", public_key=ssh_key.public)


@pytest.fixture
def boot(nova, base_image, keypair):
    """boot(name="node", image=None, wait=True, client=None, **create_kwargs)
    -> a server (ACTIVE or ERROR when ``wait``), with the test's keypair."""
    def boot(name="node", image=None, wait=True, client=None, **kwargs):
        client = client or nova
        kwargs.setdefault("key_name", keypair.name)
        if client.api_version >= api_versions.APIVersion("2.37"):
            kwargs.setdefault("nics", "auto")
        server = client.servers.create(name, image or base_image.id, "1",
                                       **kwargs)
        return wait_for_server(client, server.id) if wait else server
    return boot
