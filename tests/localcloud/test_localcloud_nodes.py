"""Every ACTIVE server is a real SSH host: paramiko round trip, rsync over
ssh into it, its own address, host key and root; deletion stops it; a
snapshot carries files to the nodes booted from it."""

import ipaddress
import os
import shutil
import socket
import subprocess

import paramiko
import pytest

from localcloud.testing import (SSHKey, ssh_connect, ssh_run, wait_for_image,
                                wait_for_server)


def _address(server):
    (address,) = server.networks["private"]
    return address


def _record(cloud, server_id):
    (record,) = [s for s in cloud.servers() if s["id"] == server_id]
    return record


def test_ssh_round_trip_in_the_node_root(cloud, boot, ssh_key):
    server = boot("ssh-node")
    record = _record(cloud, server.id)
    address = _address(server)
    assert ipaddress.IPv4Address(address) in \
        ipaddress.IPv4Network(cloud.info()["address_range"])
    client = ssh_connect(address, record["ssh_port"], ssh_key.key)
    try:
        host_key = client.get_transport().get_remote_server_key()
        assert "%s %s" % (host_key.get_name(), host_key.get_base64()) in \
            record["host_keys"]
        status, out, err = ssh_run(client, 'pwd; echo "$HOME"; cat etc/issue;'
                                   ' echo cached > cache.txt; exit 3')
        assert status == 3
        assert out.splitlines() == [record["root"], record["root"],
                                    "Ubuntu 12.04 LTS localcloud"]
    finally:
        client.close()
    with open(os.path.join(record["root"], "cache.txt")) as f:
        assert f.read() == "cached\n"


def test_each_node_has_its_own_address_key_and_root(cloud, boot):
    first, second = boot("n1"), boot("n2")
    a, b = _record(cloud, first.id), _record(cloud, second.id)
    assert _address(first) != _address(second)
    assert a["host_key"] != b["host_key"]
    assert a["root"] != b["root"]


def test_only_the_boot_keypair_may_log_in(cloud, boot, ssh_key, tmp_path):
    server = boot("locked")
    (tmp_path / "other").mkdir()
    other = SSHKey(str(tmp_path / "other"))
    with pytest.raises(paramiko.AuthenticationException):
        ssh_connect(_address(server), 2222, other.key)
    with pytest.raises(paramiko.AuthenticationException):
        ssh_connect(_address(server), 2222, ssh_key.key, username="root")


@pytest.mark.skipif(not shutil.which("rsync") or not shutil.which("ssh"),
                    reason="needs rsync and ssh")
def test_rsync_over_ssh_into_a_node(cloud, boot, ssh_key, tmp_path):
    server = boot("rsync-target")
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "data.bin").write_bytes(os.urandom(100000))
    (source / "hello.txt").write_text("hello from rsync\n")
    ssh = ("ssh -p 2222 -i %s -o IdentitiesOnly=yes -o BatchMode=yes "
           "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
           "-o LogLevel=ERROR" % ssh_key.path)
    result = subprocess.run(
        ["rsync", "-a", "-e", ssh, str(source) + "/",
         "jenkins@%s:cache/" % _address(server)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    root = _record(cloud, server.id)["root"]
    with open(os.path.join(root, "cache", "hello.txt")) as f:
        assert f.read() == "hello from rsync\n"
    with open(os.path.join(root, "cache", "sub", "data.bin"), "rb") as f:
        assert f.read() == (source / "sub" / "data.bin").read_bytes()
    # and back out again
    back = tmp_path / "back"
    result = subprocess.run(
        ["rsync", "-a", "-e", ssh,
         "jenkins@%s:cache/hello.txt" % _address(server), str(back) + "/"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (back / "hello.txt").read_text() == "hello from rsync\n"


def test_deleted_server_stops_answering_and_its_root_is_removed(
        cloud, nova, boot, ssh_key):
    server = boot("short-lived")
    record = _record(cloud, server.id)
    client = ssh_connect(_address(server), 2222, ssh_key.key)
    client.close()
    nova.servers.delete(server.id)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((record["address"], 2222), timeout=2)
    assert not os.path.exists(record["root"])
    assert _record(cloud, server.id)["deleted"] is True


def test_floating_ips_config_adds_a_floating_entry(make_clouds, cloud_config,
                                                   ssh_key):
    lc = make_clouds({"clouds": [cloud_config(**{"floating-ips": True})]})
    nova = lc["local"].nova("2.1")
    nova.keypairs.create("k", public_key=ssh_key.public)
    image = lc["local"].images()[0]["id"]
    server = wait_for_server(nova, nova.servers.create(
        "fip", image, "1", key_name="k").id)
    fixed, floating = server.addresses["private"]
    assert fixed["OS-EXT-IPS:type"] == "fixed"
    assert floating["OS-EXT-IPS:type"] == "floating"
    assert fixed["addr"] == floating["addr"]
    ssh_connect(floating["addr"], 2222, ssh_key.key).close()


def test_snapshot_carries_cached_files_to_new_nodes(cloud, boot, ssh_key):
    nova = cloud.nova("2.45")
    glance = cloud.glance()
    template = boot("template", client=nova)
    client = ssh_connect(_address(template), 2222, ssh_key.key)
    try:
        status, _, err = ssh_run(client, "mkdir -p cache/git && echo "
                                 "'cached repo' > cache/git/HEAD")
        assert status == 0, err
    finally:
        client.close()
    image_id = nova.servers.create_image(template.id, "precise-1234",
                                         {"image-build": "1234"})
    image = wait_for_image(glance, image_id)
    assert image.status == "active"
    assert image["image-build"] == "1234"
    assert image.instance_uuid == template.id
    # the template may go away: the image holds its own copy
    nova.servers.delete(template.id)
    node = boot("pool-node", image=image_id, client=nova)
    assert node.status == "ACTIVE"
    assert node.image["id"] == image_id
    client = ssh_connect(_address(node), 2222, ssh_key.key)
    try:
        status, out, _ = ssh_run(client, "cat cache/git/HEAD etc/issue")
    finally:
        client.close()
    assert status == 0
    assert out == "cached repo\nUbuntu 12.04 LTS localcloud\n"


def test_an_address_that_cannot_be_bound_is_skipped(cloud, boot):
    network = ipaddress.IPv4Network(cloud.info()["address_range"])
    first = str(next(a for a in network.hosts() if int(a) & 0xFF))
    with socket.socket() as squatter:       # e.g. a parallel test run
        squatter.bind((first, 2222))
        squatter.listen()
        server = boot("dodger")
        assert server.status == "ACTIVE"
        assert _address(server) != first
        assert ipaddress.IPv4Address(_address(server)) in network
