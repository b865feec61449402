"""The local cloud's own configuration: which clouds to run and how they behave.

This is NOT the product's configuration: the product only ever sees the
clouds.yaml the local cloud writes.  Example (see ``localcloud/example.yaml``)::

    admin-port: 0                 # 0 = any free port on 127.0.0.1
    clouds:
      - name: fast
        port: 0                   # API port (keystone, nova, glance); 0 = free
        address-range: 127.20.0.0/24
        ssh-port: 2222
        images:
          - name: Ubuntu 12.04 LTS
            directory: ./images/precise    # relative to this file
        faults:
          boot-delay: {min: 0.5, max: 2}

Every section is checked against one table; errors name the source, the key
path and what was expected (``ConfigError``).
"""

import ipaddress
import os
import re
import secrets

import yaml

from localcloud import faults as faults_mod


class ConfigError(ValueError):
    """Invalid local cloud configuration; the message names source and key."""


#: Flavors of a default devstack, as nova's api samples list them.
DEFAULT_FLAVORS = [
    {"id": "1", "name": "m1.tiny", "ram": 512, "vcpus": 1, "disk": 1},
    {"id": "2", "name": "m1.small", "ram": 2048, "vcpus": 1, "disk": 20},
    {"id": "3", "name": "m1.medium", "ram": 4096, "vcpus": 2, "disk": 40},
    {"id": "4", "name": "m1.large", "ram": 8192, "vcpus": 4, "disk": 80},
    {"id": "5", "name": "m1.xlarge", "ram": 16384, "vcpus": 8, "disk": 160},
]
DEFAULT_IMAGES = [{"name": "localcloud-base"}]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]*$")
#: How many (start, end) spans of API calls a cloud keeps per
#: "METHOD /path/{template}" key (the newest ones); ``span-history``.
DEFAULT_SPAN_HISTORY = 1000


class FlavorConfig:
    def __init__(self, id, name, ram, vcpus, disk, ephemeral=0, swap=0,
                 extra_specs=None, description=None):
        self.id, self.name = id, name
        self.ram, self.vcpus, self.disk = ram, vcpus, disk
        self.ephemeral, self.swap = ephemeral, swap
        self.extra_specs = extra_specs or {}
        self.description = description


class ImageConfig:
    def __init__(self, name, directory=None, properties=None, id=None,
                 protected=False, min_ram=0, min_disk=0):
        self.name, self.directory, self.id = name, directory, id
        self.properties = properties or {}
        self.protected = protected
        self.min_ram, self.min_disk = min_ram, min_disk


class CloudConfig:
    """One cloud (one 'provider' from the product's point of view)."""

    def __init__(self, name, port=0, region="RegionOne", username="demo",
                 password=None, project="demo", domain="Default",
                 address_range="127.10.0.0/16", ssh_port=2222,
                 ssh_users=("jenkins",), floating_ips=False, seed=None,
                 network_name="private", flavors=None, images=None,
                 faults=None, max_page_size=1000,
                 span_history=DEFAULT_SPAN_HISTORY, network_service=False,
                 block_storage=True, floating_range=None):
        self.name = name
        self.port = port
        self.region = region
        self.username = username
        self.password = password or secrets.token_urlsafe(18)
        self.project = project
        self.domain = domain
        self.address_range = ipaddress.IPv4Network(address_range)
        # Neutron (localcloud.neutron) and Cinder (localcloud.cinder) in the
        # catalog.  With the network service, servers' fixed addresses come
        # from ``fixed_range`` and floating IPs from ``floating_range``: the
        # configured floating-range, or else the upper half of address-range
        # (the lower half is then the fixed range).  Without it, fixed_range
        # is the whole address-range and there are no floating IPs.
        self.network_service = network_service
        self.block_storage = block_storage
        if not network_service:
            self.fixed_range, self.floating_range = self.address_range, None
        elif floating_range is not None:
            self.fixed_range = self.address_range
            self.floating_range = ipaddress.IPv4Network(floating_range)
        else:
            self.fixed_range, self.floating_range = \
                self.address_range.subnets(prefixlen_diff=1)
        self.ssh_port = ssh_port
        self.ssh_users = list(ssh_users)
        self.floating_ips = floating_ips
        self.seed = seed
        self.network_name = network_name
        # nova's osapi_max_limit / glance's api_limit_max: longest list page
        self.max_page_size = max_page_size
        # newest API call spans kept per counting key
        self.span_history = span_history
        self.flavors = [f if isinstance(f, FlavorConfig) else FlavorConfig(**f)
                        for f in (flavors or DEFAULT_FLAVORS)]
        self.images = [i if isinstance(i, ImageConfig) else ImageConfig(**i)
                       for i in (images or DEFAULT_IMAGES)]
        self.faults = faults_mod.validate(faults or {}, "faults")

    def __repr__(self):     # never shows the password
        return "<CloudConfig %s port=%s range=%s>" % (
            self.name, self.port, self.address_range)


class LocalCloudConfig:
    def __init__(self, clouds, admin_port=0, state_dir=None):
        self.clouds = clouds
        self.admin_port = admin_port
        self.state_dir = state_dir

    def cloud(self, name):
        for cloud in self.clouds:
            if cloud.name == name:
                return cloud
        raise KeyError(name)


# -- validation ------------------------------------------------------------------


class _Checker:
    def __init__(self, source):
        self.source = source

    def fail(self, path, message):
        raise ConfigError("%s: %s: %s" % (self.source, path, message))

    def mapping(self, value, path, table):
        """Check that ``value`` is a mapping whose keys are in ``table``."""
        if not isinstance(value, dict):
            self.fail(path, "expected a mapping, got %s" % _show(value))
        for key in value:
            if key not in table:
                self.fail("%s.%s" % (path, key) if path else key,
                          "unknown key; valid keys are %s"
                          % ", ".join(sorted(table)))
        return value

    def typed(self, value, path, kind, what):
        if isinstance(value, bool) and kind is not bool:
            self.fail(path, "expected %s, got %s" % (what, _show(value)))
        if not isinstance(value, kind):
            self.fail(path, "expected %s, got %s" % (what, _show(value)))
        return value

    def port(self, value, path):
        self.typed(value, path, int, "a port number 0-65535")
        if not 0 <= value <= 65535:
            self.fail(path, "expected a port number 0-65535, got %r" % value)
        return value

    def count(self, value, path, minimum=0):
        self.typed(value, path, int, "a whole number >= %d" % minimum)
        if value < minimum:
            self.fail(path, "expected a whole number >= %d, got %r"
                      % (minimum, value))
        return value

    def string(self, value, path, pattern=None, what="a string"):
        self.typed(value, path, str, what)
        if not value or (pattern and not pattern.match(value)):
            self.fail(path, "expected %s, got %r" % (what, value))
        return value

    def string_map(self, value, path):
        self.typed(value, path, dict, "a mapping of strings to strings")
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str):
                self.fail("%s.%s" % (path, key),
                          "expected a string value, got %s" % _show(item))
        return value


def _show(value):
    if value is None:
        return "nothing (null)"
    return "%s %r" % (type(value).__name__, value)


CLOUD_KEYS = {
    "name", "port", "region", "username", "password", "project", "domain",
    "address-range", "ssh-port", "ssh-users", "floating-ips", "seed",
    "network-name", "flavors", "images", "faults", "max-page-size",
    "span-history", "network-service", "block-storage", "floating-range",
}
FLAVOR_KEYS = {"id", "name", "ram", "vcpus", "disk", "ephemeral", "swap",
               "extra-specs", "description"}
IMAGE_KEYS = {"name", "id", "directory", "properties", "protected", "min-ram",
              "min-disk"}
TOP_KEYS = {"admin-port", "state-dir", "clouds"}


def _check_flavor(c, raw, path):
    c.mapping(raw, path, FLAVOR_KEYS)
    for key in ("id", "name", "ram", "vcpus", "disk"):
        if key not in raw:
            c.fail("%s.%s" % (path, key), "missing (required)")
    flavor_id = raw["id"]
    if isinstance(flavor_id, int) and not isinstance(flavor_id, bool):
        flavor_id = str(flavor_id)
    return FlavorConfig(
        id=c.string(flavor_id, path + ".id", what="a flavor id"),
        name=c.string(raw["name"], path + ".name"),
        ram=c.count(raw["ram"], path + ".ram", 1),
        vcpus=c.count(raw["vcpus"], path + ".vcpus", 1),
        disk=c.count(raw["disk"], path + ".disk"),
        ephemeral=c.count(raw.get("ephemeral", 0), path + ".ephemeral"),
        swap=c.count(raw.get("swap", 0), path + ".swap"),
        extra_specs=c.string_map(raw.get("extra-specs", {}),
                                 path + ".extra-specs"),
        description=raw.get("description"),
    )


def _check_image(c, raw, path, base_dir):
    c.mapping(raw, path, IMAGE_KEYS)
    if "name" not in raw:
        c.fail(path + ".name", "missing (required)")
    directory = raw.get("directory")
    if directory is not None:
        c.string(directory, path + ".directory", what="a directory path")
        directory = os.path.join(base_dir, os.path.expanduser(directory))
        if not os.path.isdir(directory):
            c.fail(path + ".directory", "no such directory: %s" % directory)
        directory = os.path.abspath(directory)
    image_id = raw.get("id")
    if image_id is not None:
        c.string(image_id, path + ".id", re.compile(r"^[0-9a-fA-F-]{32,36}$"),
                 "a UUID")
    protected = raw.get("protected", False)
    c.typed(protected, path + ".protected", bool, "true or false")
    return ImageConfig(
        name=c.string(raw["name"], path + ".name"),
        directory=directory,
        properties=c.string_map(raw.get("properties", {}),
                                path + ".properties"),
        id=image_id,
        protected=protected,
        min_ram=c.count(raw.get("min-ram", 0), path + ".min-ram"),
        min_disk=c.count(raw.get("min-disk", 0), path + ".min-disk"),
    )


def _check_range(c, value, path):
    c.string(value, path, what="a loopback network such as 127.20.0.0/24")
    try:
        network = ipaddress.IPv4Network(value)
    except ValueError as e:
        c.fail(path, "expected a loopback network such as 127.20.0.0/24 (%s)"
               % e)
    if not network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
        c.fail(path, "%s is not inside 127.0.0.0/8 (nodes live on loopback "
               "only)" % value)
    if network.prefixlen > 29:
        c.fail(path, "%s is too small; use a /29 or larger" % value)
    return str(network)


def _check_cloud(c, raw, index, base_dir):
    path = "clouds[%d]" % index
    c.mapping(raw, path, CLOUD_KEYS)
    if "name" not in raw:
        c.fail(path + ".name", "missing (required)")
    name = c.string(raw["name"], path + ".name", NAME_RE,
                    "a name of letters, digits, '.', '_' or '-'")
    path = "clouds[%s]" % name
    kwargs = {"name": name}
    if "port" in raw:
        kwargs["port"] = c.port(raw["port"], path + ".port")
    if "ssh-port" in raw:
        kwargs["ssh_port"] = c.port(raw["ssh-port"], path + ".ssh-port")
        if kwargs["ssh_port"] == 0:
            c.fail(path + ".ssh-port", "expected a fixed port 1-65535 (all "
                   "nodes of a cloud share it)")
    for key in ("region", "username", "password", "project", "domain",
                "network-name"):
        if key in raw:
            kwargs[key.replace("-", "_")] = c.string(raw[key],
                                                     "%s.%s" % (path, key))
    kwargs["address_range"] = _check_range(
        c, raw.get("address-range", "127.%d.0.0/16" % (10 + index)),
        path + ".address-range")
    if "ssh-users" in raw:
        users = c.typed(raw["ssh-users"], path + ".ssh-users", list,
                        "a list of user names")
        if not users:
            c.fail(path + ".ssh-users", "expected at least one user name")
        for i, user in enumerate(users):
            c.string(user, "%s.ssh-users[%d]" % (path, i), USER_RE,
                     "a Unix user name")
        kwargs["ssh_users"] = users
    if "max-page-size" in raw:
        kwargs["max_page_size"] = c.count(raw["max-page-size"],
                                          path + ".max-page-size", 1)
    if "span-history" in raw:
        kwargs["span_history"] = c.count(raw["span-history"],
                                         path + ".span-history", 1)
    for key in ("floating-ips", "network-service", "block-storage"):
        if key in raw:
            kwargs[key.replace("-", "_")] = c.typed(
                raw[key], "%s.%s" % (path, key), bool, "true or false")
    if kwargs.get("network_service") and kwargs.get("floating_ips"):
        c.fail(path + ".floating-ips", "cannot be used with network-service: "
               "true (floating IPs then come from the network service)")
    if raw.get("floating-range") is not None:
        if not kwargs.get("network_service"):
            c.fail(path + ".floating-range", "is only used with "
                   "network-service: true")
        kwargs["floating_range"] = _check_range(c, raw["floating-range"],
                                                path + ".floating-range")
    if raw.get("seed") is not None:
        kwargs["seed"] = c.typed(raw["seed"], path + ".seed", int,
                                 "a whole number")
    if "flavors" in raw:
        flavors = c.typed(raw["flavors"], path + ".flavors", list,
                          "a list of flavors")
        kwargs["flavors"] = [_check_flavor(c, f, "%s.flavors[%d]" % (path, i))
                             for i, f in enumerate(flavors)]
        if not kwargs["flavors"]:
            c.fail(path + ".flavors", "expected at least one flavor")
        ids = [f.id for f in kwargs["flavors"]]
        if len(set(ids)) != len(ids):
            c.fail(path + ".flavors", "flavor ids must be unique, got %s" % ids)
    if "images" in raw:
        images = c.typed(raw["images"], path + ".images", list,
                         "a list of base images")
        kwargs["images"] = [_check_image(c, i, "%s.images[%d]" % (path, n),
                                         base_dir)
                            for n, i in enumerate(images)]
    if "faults" in raw:
        try:
            kwargs["faults"] = faults_mod.validate(raw["faults"] or {},
                                                   path + ".faults")
        except faults_mod.FaultError as e:
            raise ConfigError("%s: %s" % (c.source, e)) from None
    return CloudConfig(**kwargs)


def _check_floating_overlaps(c, clouds):
    """Floating ranges may overlap no address-range and no other floating
    range (address ranges are not checked against each other)."""
    ranges = [(cloud.name, "address-range", cloud.address_range)
              for cloud in clouds]
    # (an implicit floating range is the upper half of the cloud's own
    # address-range, which is then not the fixed range)
    ranges += [(cloud.name, "floating-range", cloud.floating_range)
               for cloud in clouds if cloud.floating_range is not None
               and cloud.fixed_range == cloud.address_range]
    for i, (name, key, network) in enumerate(ranges):
        if key != "floating-range":
            continue
        for other_name, other_key, other in ranges[:i] + ranges[i + 1:]:
            if network.overlaps(other):
                c.fail("clouds[%s].floating-range" % name,
                       "%s overlaps the %s %s of cloud %s"
                       % (network, other_key, other, other_name))


def parse(data, source="<config>", base_dir=None):
    """Validate an already-loaded mapping; ``base_dir`` resolves relative
    image directories (default: the current directory)."""
    c = _Checker(source)
    base_dir = base_dir or os.getcwd()
    c.mapping(data, "", TOP_KEYS)
    if "clouds" not in data:
        c.fail("clouds", "missing (required): a list of clouds")
    clouds_raw = c.typed(data["clouds"], "clouds", list, "a list of clouds")
    if not clouds_raw:
        c.fail("clouds", "expected at least one cloud")
    clouds = [_check_cloud(c, raw, i, base_dir)
              for i, raw in enumerate(clouds_raw)]
    names = [cloud.name for cloud in clouds]
    for name in names:
        if names.count(name) > 1:
            c.fail("clouds", "cloud name %r is used twice" % name)
    _check_floating_overlaps(c, clouds)
    ports = [cloud.port for cloud in clouds if cloud.port]
    for port in ports:
        if ports.count(port) > 1:
            c.fail("clouds", "API port %d is used by two clouds" % port)
    state_dir = data.get("state-dir")
    if state_dir is not None:
        c.string(state_dir, "state-dir", what="a directory path")
        state_dir = os.path.abspath(os.path.join(base_dir, state_dir))
    return LocalCloudConfig(
        clouds=clouds,
        admin_port=c.port(data.get("admin-port", 0), "admin-port"),
        state_dir=state_dir,
    )


def load(path):
    """Read and validate a YAML file."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, e.strerror)) from None
    except yaml.YAMLError as e:
        raise ConfigError("%s: not valid YAML: %s" % (path, e)) from None
    return parse(data, source=path,
                 base_dir=os.path.dirname(os.path.abspath(path)))
