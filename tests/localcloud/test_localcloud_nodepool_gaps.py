"""Gaps Nodepool 11 (through openstacksdk) found in the local cloud, each fixed.

The clouds.yaml ``private`` flag: openstacksdk connects to a server's
``interface_ip``, which is its public address unless the cloud entry says
``private: true``; and, with floating IPs enabled (its default), it asks for a
floating IP for every server that has only fixed addresses.  Without the
network service the local cloud has no floating IPs (nova's
``os-floating-ips`` lists none and cannot make one) and its fixed 127.x
addresses are the ones to connect to, as on a cloud whose tenant network is
the client's own: so its clouds.yaml says ``private: true`` there.  With the
network service (real floating IPs that answer SSH) or ``floating-ips: true``
(the address listed as floating too) the entry stays as it was.
"""

import yaml

from localcloud.testing import SSHKey, ssh_connect, wait_for_server


def _entry(localcloud, name="local"):
    with open(localcloud.clouds_yaml) as f:
        return yaml.safe_load(f)["clouds"][name]


def test_nova_only_cloud_is_private_in_clouds_yaml(localcloud):
    entry = _entry(localcloud)
    assert entry["private"] is True
    assert entry["interface"] == "public"       # the API endpoints stay public


def test_private_address_is_fixed_and_answers_ssh(localcloud, tmp_path):
    """What ``private: true`` promises: the server's fixed address is reachable."""
    cloud = localcloud["local"]
    nova = cloud.nova("2.1")
    key = SSHKey(str(tmp_path))
    nova.keypairs.create("gap", public_key=key.public)
    image = [i for i in cloud.images() if i["name"] == "Ubuntu 12.04 LTS"][0]
    server = nova.servers.create("gap", image["id"], "1", key_name="gap")
    server = wait_for_server(nova, server.id)
    assert server.status == "ACTIVE"
    (address,) = server.addresses["private"]
    assert address["OS-EXT-IPS:type"] == "fixed"
    assert address["version"] == 4
    client = ssh_connect(address["addr"], cloud.info()["ssh_port"], key.key)
    client.close()
    nova.servers.delete(server.id)


def test_nova_network_floating_ips_are_none(localcloud):
    """The reason for ``private``: no floating IP to get (below 2.36)."""
    nova = localcloud["local"].adapter("compute")
    got = nova.get("/os-floating-ips", headers={"OpenStack-API-Version": "compute 2.1"})
    assert got.json() == {"floating_ips": []}


def test_network_service_cloud_is_not_private(make_clouds, cloud_config):
    lc = make_clouds({"clouds": [cloud_config(**{"network-service": True})]})
    assert "private" not in _entry(lc)


def test_floating_ips_cloud_is_not_private(make_clouds, cloud_config):
    lc = make_clouds({"clouds": [cloud_config(**{"floating-ips": True})]})
    assert "private" not in _entry(lc)
