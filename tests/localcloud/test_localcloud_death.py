"""node-death (nodes that stop answering SSH, by knob or on demand) and
bad-images (a marker file on nodes booted from images with a "bad" name),
observed through real SSH (paramiko), the real clients and the admin
endpoint."""

import json
import os
import socket
import threading
import time

import paramiko
import pytest
import yaml

from localcloud import cmd, faults
from localcloud.cmd import AdminClient
from localcloud.faults import BAD_IMAGE_MARKER
from localcloud.state import ApiError
from localcloud.testing import (CloudHandle, listening_sockets, ssh_connect,
                                ssh_run, wait_for_image, wait_for_server)
from tests.localcloud.test_localcloud_faults import _admin


def _address(server):
    return server.networks["private"][0]


def _record(cloud, server_id):
    (record,) = [s for s in cloud.servers() if s["id"] == server_id]
    return record


def _wait(predicate, what, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting: " + what
        time.sleep(0.02)


def _no_banner(address, key):
    """A new connection is accepted but never gets an SSH banner."""
    socket.create_connection((address, 2222), timeout=2).close()
    with pytest.raises(paramiko.SSHException):
        ssh_connect(address, 2222, key, timeout=0.3)


def _node_threads(address):
    return [t for t in threading.enumerate()
            if t.name == "sshhost-%s:2222" % address]


# -- validation -------------------------------------------------------------------


def test_node_death_and_bad_images_validate_and_merge():
    knobs = faults.validate({})
    assert knobs["node-death"] == {"rate": 0.0,
                                   "after": {"min": 0.0, "max": 0.0}}
    assert knobs["bad-images"] == []
    knobs = faults.validate({"node-death": {"rate": 1, "after": 0.3},
                             "bad-images": ["precise-.*", r"bad\d+"]})
    assert knobs["node-death"] == {"rate": 1.0,
                                   "after": {"min": 0.3, "max": 0.3}}
    assert knobs["bad-images"] == ["precise-.*", r"bad\d+"]
    # one level deep, like the other mapping knobs; the list is replaced
    merged = faults.merge(knobs, {"node-death": {"rate": 0.25},
                                  "bad-images": ["other"]})
    assert merged["node-death"] == {"rate": 0.25,
                                    "after": {"min": 0.3, "max": 0.3}}
    assert merged["bad-images"] == ["other"]
    merged = faults.merge(merged, {"node-death": {"after": {"max": 2}},
                                   "bad-images": None})
    assert merged["node-death"]["after"] == {"min": 0.3, "max": 2.0}
    assert merged["bad-images"] == []
    assert knobs["node-death"]["rate"] == 1.0       # never modified
    # names match fully
    assert faults.bad_image(knobs, "precise-1234")
    assert faults.bad_image(knobs, "bad42")
    assert not faults.bad_image(knobs, "old-precise-1234")
    assert not faults.bad_image(knobs, "bad42-fixed")
    assert not faults.bad_image(knobs, None)
    for bad, message in [
            ({"node-death": 0.5},
             "faults.node-death: expected a mapping with keys rate, after"),
            ({"node-death": {"rate": 2}},
             "faults.node-death.rate: expected a probability between 0 and 1"),
            ({"node-death": {"rate": True}},
             "faults.node-death.rate: expected a number"),
            ({"node-death": {"after": -1}},
             "faults.node-death.after: expected seconds >= 0"),
            ({"node-death": {"after": {"min": 3, "max": 1}}},
             "faults.node-death.after: min 3.0 is greater than max 1.0"),
            ({"node-death": {"after": {"mean": 3}}},
             "faults.node-death.after.mean: unknown key; valid keys are min, max"),
            ({"node-death": {"when": 3}},
             "faults.node-death.when: unknown key; valid keys are rate, after"),
            ({"bad-images": "precise-.*"},
             "faults.bad-images: expected a list of regular expressions"),
            ({"bad-images": ["ok", 3]},
             "faults.bad-images[1]: expected a regular expression (a string)"),
            ({"bad-images": ["ok", "precise-("]},
             "faults.bad-images[1]: not a valid regular expression 'precise-('")]:
        with pytest.raises(faults.FaultError) as e:
            faults.validate(bad)
        assert str(e.value).startswith(message), str(e.value)


def test_bad_knobs_in_the_yaml_and_through_the_admin_endpoint(
        cloud_config, localcloud):
    from localcloud import config
    with pytest.raises(config.ConfigError) as e:
        config.parse({"clouds": [cloud_config(
            faults={"bad-images": ["("]})]}, "clouds-local.yaml")
    assert "faults.bad-images[0]: not a valid regular expression" in str(e.value)
    base = localcloud.admin_url + "/clouds/local"
    status, error = _admin(base + "/faults", "PUT",
                           {"node-death": {"rate": -0.1}})
    assert status == 400
    assert error["error"].startswith("faults.node-death.rate: expected a "
                                     "probability")
    status, knobs = _admin(base + "/faults", "PUT",
                           {"node-death": {"after": {"min": 1, "max": 2}},
                            "bad-images": ["x.*"]})
    assert status == 200
    assert knobs["node-death"] == {"rate": 0.0,
                                   "after": {"min": 1.0, "max": 2.0}}
    assert knobs["bad-images"] == ["x.*"]


# -- node-death by rate -------------------------------------------------------------


def test_node_death_cuts_sessions_then_never_sends_a_banner(
        cloud, nova, boot, ssh_key):
    # 0.6 s: connecting and starting a command takes ~0.15 s on an idle
    # machine, and the suite runs with -n auto
    cloud.set_faults({"node-death": {"rate": 1, "after": 0.6}})
    server = boot("doomed")
    address = _address(server)
    record = _record(cloud, server.id)
    assert record["dies_at"] == pytest.approx(record["launched_at"] + 0.6)
    assert record["died_at"] is None
    client = ssh_connect(address, 2222, ssh_key.key)
    try:
        # SSH works: a long command starts and says its pid
        channel = client.get_transport().open_session()
        channel.exec_command("echo $$; exec sleep 30")
        pid = int(channel.makefile("r").readline())
        assert time.time() < record["dies_at"], "too slow to test the cut"
        # the open session is cut and its command killed
        _wait(lambda: not client.get_transport().is_active(),
              "the session to be cut")
        assert channel.closed
        _wait(lambda: not os.path.exists("/proc/%d" % pid)
              or open("/proc/%d/stat" % pid).read().split()[2] == "Z",
              "the command to be killed")
    finally:
        client.close()
    died = _record(cloud, server.id)
    assert died["died_at"] >= record["dies_at"]
    _no_banner(address, ssh_key.key)
    # still ACTIVE, same address, root kept
    server = nova.servers.get(server.id)
    assert server.status == "ACTIVE" and _address(server) == address
    assert os.path.isdir(record["root"])
    assert cloud.stats()["events"]["servers-died"] == 1
    # deleting it frees everything
    nova.servers.delete(server.id)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 2222), timeout=2)
    assert (address, 2222) not in listening_sockets()
    assert not os.path.exists(record["root"])
    _wait(lambda: not _node_threads(address), "the node's threads to end")


def test_a_node_deleted_before_its_death_does_not_die(cloud, nova, boot,
                                                      ssh_key):
    cloud.set_faults({"node-death": {"rate": 1, "after": 0.2}})
    server = boot("short-lived")
    address = _address(server)
    nova.servers.delete(server.id)
    time.sleep(0.4)
    assert "servers-died" not in cloud.stats()["events"]
    assert _record(cloud, server.id)["died_at"] is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 2222), timeout=2)
    assert not _node_threads(address)


def test_rate_zero_never_dies(cloud, nova, boot, ssh_key):
    cloud.set_faults({"node-death": {"rate": 0, "after": 0}})
    server = boot("immortal")
    time.sleep(0.3)
    client = ssh_connect(_address(server), 2222, ssh_key.key)
    try:
        assert ssh_run(client, "echo still here")[1] == "still here\n"
    finally:
        client.close()
    record = _record(cloud, server.id)
    assert record["dies_at"] is None and record["died_at"] is None
    assert "servers-died" not in cloud.stats()["events"]


def test_which_nodes_die_is_seeded_and_rates_0_and_1_draw_nothing(
        make_clouds, cloud_config):
    def doomed(rates):
        """Boot 6 servers per rate, in order; the names due to die."""
        lc = make_clouds({"clouds": [cloud_config(seed=11, faults={
            "boot-delay": 0})]})
        cloud = lc["local"]
        nova = cloud.nova("2.1")
        image = cloud.images()[0]["id"]
        for index, rate in enumerate(rates):
            # far in the future: the draw is tested, not the death
            cloud.set_faults({"node-death": {"rate": rate, "after": 60}})
            nova.servers.create("r%d" % index, image, "1", min_count=6,
                                max_count=6)
        count = 6 * len(rates)
        _wait(lambda: [s["status"] for s in cloud.servers()]
              == ["ACTIVE"] * count, "%d servers ACTIVE" % count)
        return [s["name"] for s in cloud.servers() if s["dies_at"]]

    half = doomed([0.5])
    assert half == doomed([0.5])                # same seed, same deaths
    assert 0 < len(half) < 6, half
    # rate 1 kills all, rate 0 none, and neither consumes a draw: the
    # rate-0.5 boots after them are doomed exactly as before
    mixed = doomed([1, 0, 0.5])
    assert mixed == ["r0-%d" % i for i in range(1, 7)] + \
        [name.replace("r0-", "r2-") for name in half]


# -- kill one node now ------------------------------------------------------------


def test_kill_node_by_handle_and_admin_endpoint(localcloud, cloud, nova, boot,
                                                ssh_key):
    first, second, bystander = boot("first"), boot("second"), boot("bystander")
    entry = cloud.kill_node(first.id)
    assert entry["id"] == first.id and entry["died_at"] is not None
    _no_banner(_address(first), ssh_key.key)
    base = localcloud.admin_url + "/clouds/local/servers/"
    status, entry = _admin(base + second.id + "/die", "POST", {})
    assert status == 200 and entry["died_at"] is not None
    _no_banner(_address(second), ssh_key.key)
    # the others are untouched, the dead ones stay ACTIVE
    client = ssh_connect(_address(bystander), 2222, ssh_key.key)
    client.close()
    assert [nova.servers.get(s.id).status for s in (first, second)] == \
        ["ACTIVE", "ACTIVE"]
    assert cloud.stats()["events"]["servers-died"] == 2

    # 404: unknown; 409: already dead, no network, still building
    status, error = _admin(base + "no-such-server/die", "POST", {})
    assert status == 404 and "could not be found" in error["error"]
    with pytest.raises(ApiError) as e:
        cloud.kill_node("no-such-server")
    assert e.value.status == 404
    status, error = _admin(base + first.id + "/die", "POST", {})
    assert status == 409 and "does not answer SSH already" in error["error"]
    cloud.set_faults({"no-network-rate": 1})
    silent = boot("silent")
    with pytest.raises(ApiError) as e:
        cloud.kill_node(silent.id)
    assert e.value.status == 409
    cloud.set_faults({"no-network-rate": 0, "stuck-build-rate": 1})
    stuck = boot("stuck", wait=False)
    status, error = _admin(base + stuck.id + "/die", "POST", {})
    assert status == 409 and "vm_state building" in error["error"]
    nova.servers.delete(first.id)
    status, _ = _admin(base + first.id + "/die", "POST", {})
    assert status == 404
    assert cloud.stats()["events"]["servers-died"] == 2


def test_kill_node_through_the_admin_client_and_cli(localcloud, cloud, boot,
                                                    ssh_key, capsys):
    # the CLI's faults command sets both knobs
    assert cmd.main(["faults", "--admin", localcloud.admin_url, "local",
                     "node-death.after={min: 5, max: 9}",
                     "bad-images=[nothing-.*]"]) == 0
    knobs = json.loads(capsys.readouterr().out)
    assert knobs["node-death"] == {"rate": 0.0,
                                   "after": {"min": 5.0, "max": 9.0}}
    assert knobs["bad-images"] == ["nothing-.*"]
    one, two = boot("one"), boot("two")
    assert cmd.main(["kill-node", "--admin", localcloud.admin_url, "local",
                     one.id]) == 0
    out = capsys.readouterr().out
    assert one.id in out and "no longer answers SSH" in out
    _no_banner(_address(one), ssh_key.key)
    assert cmd.main(["kill-node", "--admin", localcloud.admin_url, "local",
                     one.id]) == 1
    assert "does not answer SSH already" in capsys.readouterr().err
    # a handle on the admin endpoint raises what the in-process one does
    with open(localcloud.clouds_yaml) as f:
        entry = yaml.safe_load(f)["clouds"]["local"]
    remote = CloudHandle("local", entry,
                         AdminClient(localcloud.admin_url, "local"),
                         localcloud.admin_url)
    with pytest.raises(ApiError) as e:
        remote.kill_node(one.id)
    assert e.value.status == 409
    with pytest.raises(ApiError) as e:
        remote.kill_node("no-such-server")
    assert e.value.status == 404
    assert remote.kill_node(two.id)["died_at"] is not None
    _no_banner(_address(two), ssh_key.key)


# -- bad images -------------------------------------------------------------------


def test_bad_images_marker_follows_the_image_name(make_clouds, cloud_config,
                                                  ssh_key):
    lc = make_clouds({"clouds": [cloud_config(
        faults={"boot-delay": 0, "bad-images": ["precise-bad-.*"]})]})
    cloud = lc["local"]
    nova, glance = cloud.nova("2.45"), cloud.glance()
    nova.keypairs.create("k", public_key=ssh_key.public)

    def boot(name, image):
        server = wait_for_server(nova, nova.servers.create(
            name, image, "1", key_name="k", nics="auto").id)
        assert server.status == "ACTIVE"
        return server

    def marker(server):
        """(exit status of the gate's check, the marker's content)."""
        client = ssh_connect(_address(server), 2222, ssh_key.key)
        try:
            status, _, _ = ssh_run(client, "test ! -e ~/%s" % BAD_IMAGE_MARKER)
            _, content, _ = ssh_run(client, "cat ~/%s 2>/dev/null"
                                    % BAD_IMAGE_MARKER)
        finally:
            client.close()
        return status, content

    def snapshot(server, name):
        image_id = nova.servers.create_image(server.id, name)
        assert wait_for_image(glance, image_id).status == "active"
        return image_id

    base = cloud.images()[0]["id"]
    clean = boot("clean", base)
    assert marker(clean) == (0, "")
    assert _record(cloud, clean.id)["bad_image"] is None
    # a snapshot made later whose name matches: nodes booted from it are bad
    bad_image = snapshot(clean, "precise-bad-1")
    bad = boot("bad", bad_image)
    assert marker(bad) == (1, "precise-bad-1 (%s)\n" % bad_image)
    assert _record(cloud, bad.id)["bad_image"] == \
        "precise-bad-1 (%s)" % bad_image
    # a snapshot of the bad node under a name that does not match: clean
    good_image = snapshot(bad, "precise-good-1")
    assert marker(boot("good", good_image)) == (0, "")
    # matching happens at boot: renaming the rule cleans the bad image too
    cloud.set_faults({"bad-images": ["precise-good-.*"]})
    assert marker(boot("bad-again", good_image))[0] == 1
    assert marker(boot("bad-no-more", bad_image)) == (0, "")
    assert cloud.stats()["events"]["servers-bad-image"] == 2
