"""The local cloud's own YAML and the fault knobs: bad input is refused
with a message naming the file, the key and what was expected."""

import pytest

from localcloud import config, faults


def parse(text_or_data, source="test.yaml"):
    return config.parse(text_or_data, source)


@pytest.mark.parametrize("data, message", [
    ({}, "test.yaml: clouds: missing (required): a list of clouds"),
    ({"clouds": []}, "test.yaml: clouds: expected at least one cloud"),
    ({"clouds": [{"port": 1}]},
     "test.yaml: clouds[0].name: missing (required)"),
    ({"clouds": [{"name": "a", "colour": "red"}]},
     "test.yaml: clouds[0].colour: unknown key; valid keys are "
     "address-range, block-storage, domain, faults, flavors, floating-ips, "
     "floating-range, images, max-page-size, name, network-name, "
     "network-service, password, port, project, region, seed, "
     "span-history, ssh-port, ssh-users, username"),
    ({"clouds": [{"name": "a"}, {"name": "a"}]},
     "test.yaml: clouds: cloud name 'a' is used twice"),
    ({"clouds": [{"name": "a", "port": 70000}]},
     "test.yaml: clouds[a].port: expected a port number 0-65535, got 70000"),
    ({"clouds": [{"name": "a", "ssh-port": 0}]},
     "test.yaml: clouds[a].ssh-port: expected a fixed port 1-65535 (all "
     "nodes of a cloud share it)"),
    ({"clouds": [{"name": "a", "address-range": "10.0.0.0/24"}]},
     "test.yaml: clouds[a].address-range: 10.0.0.0/24 is not inside "
     "127.0.0.0/8 (nodes live on loopback only)"),
    ({"clouds": [{"name": "a", "address-range": "127.1.1.0/30"}]},
     "test.yaml: clouds[a].address-range: 127.1.1.0/30 is too small; use a "
     "/29 or larger"),
    ({"clouds": [{"name": "a", "ssh-users": ["Root!"]}]},
     "test.yaml: clouds[a].ssh-users[0]: expected a Unix user name, got "
     "'Root!'"),
    ({"clouds": [{"name": "a", "images": [{"directory": "/nonexistent"}]}]},
     "test.yaml: clouds[a].images[0].name: missing (required)"),
    ({"clouds": [{"name": "a", "images": [{"name": "x",
                                           "directory": "/nonexistent"}]}]},
     "test.yaml: clouds[a].images[0].directory: no such directory: "
     "/nonexistent"),
    ({"clouds": [{"name": "a", "flavors": [{"id": 1, "name": "f", "ram": 0,
                                            "vcpus": 1, "disk": 1}]}]},
     "test.yaml: clouds[a].flavors[0].ram: expected a whole number >= 1, "
     "got 0"),
    ({"clouds": [{"name": "a", "faults": {"boot-delay": {"min": 3,
                                                         "max": 1}}}]},
     "test.yaml: clouds[a].faults.boot-delay: min 3.0 is greater than max "
     "1.0"),
    ({"clouds": [{"name": "a", "faults": {"outage": "yes"}}]},
     "test.yaml: clouds[a].faults.outage: expected true or false, got 'yes'"),
    ({"clouds": [{"name": "a", "faults": {"quota": {"disk": 1}}}]},
     "test.yaml: clouds[a].faults.quota.disk: unknown key; valid keys are "
     "instances, cores, ram"),
])
def test_bad_config_is_refused_naming_the_key(data, message):
    with pytest.raises(config.ConfigError) as error:
        parse(data)
    assert str(error.value) == message


def test_defaults_and_relative_image_directory(tmp_path):
    (tmp_path / "images" / "precise").mkdir(parents=True)
    path = tmp_path / "local.yaml"
    path.write_text("clouds:\n  - name: a\n    images:\n"
                    "      - name: precise\n"
                    "        directory: images/precise\n"
                    "  - name: b\n")
    cfg = config.load(str(path))
    a, b = cfg.clouds
    assert a.images[0].directory == str(tmp_path / "images" / "precise")
    assert (a.ssh_port, a.ssh_users, a.region) == (2222, ["jenkins"],
                                                   "RegionOne")
    assert str(a.address_range) != str(b.address_range)
    assert [f.name for f in a.flavors][0] == "m1.tiny"
    assert a.password and a.password != b.password     # random when unset
    assert a.password not in repr(a)
    assert a.faults == faults.defaults()


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("clouds: [\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(str(broken))


def test_fault_merge_is_partial_and_never_mutates():
    current = faults.defaults()
    updated = faults.merge(current, {"quota": {"cores": 8},
                                     "boot-delay": {"max": 2},
                                     "api-latency": 0.25})
    assert current == faults.defaults()
    assert updated["quota"] == {"instances": None, "cores": 8, "ram": None}
    assert updated["boot-delay"] == {"min": 0.0, "max": 2.0}
    assert updated["api-latency"] == {"min": 0.25, "max": 0.25}
    raised = faults.merge(updated, {"boot-delay": {"min": 5}})
    assert raised["boot-delay"] == {"min": 5.0, "max": 5.0}
    with pytest.raises(faults.FaultError, match="token-ttl: expected seconds"):
        faults.merge(current, {"token-ttl": 0})
    with pytest.raises(faults.FaultError, match="lying-delete-lists"):
        faults.merge(current, {"lying-delete-lists": 1.5})


def test_chance_and_sample_edges():
    class NoRandom:
        def random(self):
            raise AssertionError("rates of 0 and 1 must not draw")
    assert faults.chance(NoRandom(), 0.0) is False
    assert faults.chance(NoRandom(), 1.0) is True
    assert faults.sample(NoRandom(), {"min": 2.0, "max": 2.0}) == 2.0
