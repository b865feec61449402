"""A localcloud process: N named clouds plus one admin endpoint.

    with LocalCloud(config.load("clouds-local.yaml")) as local:
        local.write_clouds_yaml("clouds.yaml")
        local.clouds["flaky"].set_faults({"boot-error-rate": 0.3})

All state (node roots, image stores) lives in a private directory created
under ``state_dir`` (or the system temp dir) and removed by ``stop()``.
"""

import json
import logging
import os
import shutil
import tempfile

import yaml

from localcloud.admin import AdminServer
from localcloud.cloud import Cloud

LOG = logging.getLogger("localcloud")


class LocalCloud:
    def __init__(self, config, state_dir=None, admin_port=None):
        self.config = config
        self.parent_dir = state_dir or config.state_dir
        self.admin_port = config.admin_port if admin_port is None else admin_port
        self.state_dir = None
        self.clouds = {}
        self.admin = None

    @property
    def admin_url(self):
        return self.admin.url if self.admin else None

    def start(self):
        created_parent = False
        if self.parent_dir and not os.path.isdir(self.parent_dir):
            os.makedirs(self.parent_dir)
            created_parent = True
        self.state_dir = tempfile.mkdtemp(prefix="localcloud-",
                                          dir=self.parent_dir)
        self._created_parent = created_parent
        try:
            for cloud_config in self.config.clouds:
                cloud = Cloud(cloud_config,
                              os.path.join(self.state_dir, cloud_config.name))
                self.clouds[cloud_config.name] = cloud
                cloud.start()
            self.admin = AdminServer(self, self.admin_port)
        except BaseException:
            self.stop()
            raise
        LOG.info("localcloud: %d clouds up, admin endpoint %s",
                 len(self.clouds), self.admin_url)
        return self

    def stop(self):
        """Tear down every node and listener; remove all state we created."""
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        for cloud in self.clouds.values():
            try:
                cloud.close()
            except Exception:
                LOG.exception("cloud %s: teardown failed", cloud.name)
        self.clouds = {}
        if self.state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            if getattr(self, "_created_parent", False):
                try:
                    os.rmdir(self.parent_dir)
                except OSError:
                    pass
            self.state_dir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- files for the product and for scripts ------------------------------------

    def clouds_yaml(self):
        """The clouds.yaml content pointing at these clouds (has passwords)."""
        entries = {}
        for name, cloud in self.clouds.items():
            c = cloud.config
            entries[name] = {
                "auth": {"auth_url": cloud.auth_url, "username": c.username,
                         "password": c.password, "project_name": c.project,
                         "user_domain_name": c.domain,
                         "project_domain_name": c.domain},
                "region_name": c.region,
                "identity_api_version": 3,
                "interface": "public",
            }
            if not (c.network_service or c.floating_ips):
                # The fixed addresses are the ones to connect to (loopback, no
                # NAT) and there are no floating IPs to make: openstacksdk's
                # "private" (interface_ip is private_v4; no auto floating IP).
                entries[name]["private"] = True
        return {"clouds": entries}

    def write_clouds_yaml(self, path):
        """Write clouds.yaml readable by its owner only (it holds passwords)."""
        _write_private(path, yaml.safe_dump(self.clouds_yaml(),
                                            default_flow_style=False))
        LOG.info("localcloud: wrote clouds.yaml to %s", path)

    def ready_info(self):
        return {"pid": os.getpid(), "admin_url": self.admin_url,
                "state_dir": self.state_dir,
                "clouds": {name: cloud.info()
                           for name, cloud in self.clouds.items()}}

    def write_ready_file(self, path):
        _write_private(path, json.dumps(self.ready_info(), indent=2) + "\n")


def _write_private(path, text):
    path = os.path.abspath(path)
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
