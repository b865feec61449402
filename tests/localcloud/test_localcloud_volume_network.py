"""Block storage (cinder v3) and the optional network service (neutron
v2.0) through real keystoneauth1 sessions: the catalog, version discovery,
volume limits and the empty volume calls, networks, subnets and ports with
neutron's filters, and floating IPs whose addresses really answer SSH
(attach, detach, re-attach, delete, server delete).

openstacksdk is not in the project's virtualenv, so these use keystoneauth1
Adapters (what openstacksdk's proxies are built on) and plain requests.
"""

import ipaddress
import socket
import threading

import pytest
import requests
from keystoneauth1 import exceptions as ksa_exc

from localcloud import config as config_mod
from localcloud.testing import (listening_sockets, ssh_connect, ssh_run,
                               wait_for_server)

BASE_IMAGE = "Ubuntu 12.04 LTS"        # conftest's cloud_config base image
LIMIT_KEYS = {"maxTotalVolumes", "maxTotalVolumeGigabytes",
              "maxTotalSnapshots", "maxTotalBackups",
              "maxTotalBackupGigabytes", "totalVolumesUsed",
              "totalGigabytesUsed", "totalSnapshotsUsed", "totalBackupsUsed",
              "totalBackupGigabytesUsed"}


@pytest.fixture
def netcloud(make_clouds, cloud_config):
    lc = make_clouds({"clouds": [cloud_config(**{"network-service": True})]})
    return lc["local"]


@pytest.fixture
def network(netcloud):
    return netcloud.adapter("network")


@pytest.fixture
def netboot(netcloud, ssh_key):
    """netboot(name) -> an ACTIVE server of ``netcloud`` with the test's
    keypair (conftest's ``boot`` boots in the plain ``cloud``)."""
    nova = netcloud.nova("2.1")
    nova.keypairs.create("testkey", public_key=ssh_key.public)
    image = next(i for i in netcloud.glance().images.list()
                 if i.name == BASE_IMAGE)

    def boot(name):
        server = nova.servers.create(name, image.id, "1", key_name="testkey")
        server = wait_for_server(nova, server.id)
        assert server.status == "ACTIVE"
        return server
    return boot


def _catalog(cloud):
    session = cloud.session()
    return {entry["type"]: entry for entry in
            session.auth.get_access(session).service_catalog.catalog}


def _base(cloud):
    return cloud.auth_url.rsplit("/identity", 1)[0]


def _fip_threads():
    return [t for t in threading.enumerate()
            if t.name.startswith("localcloud-fip-")]


def _neutron_error(resp, status, kind=None):
    assert resp.status_code == status, resp.text
    error = resp.json()["NeutronError"]
    assert set(error) == {"type", "message", "detail"}
    if kind is not None:
        assert error["type"] == kind
    return error["message"]


def _port_of(network, server_id):
    (port,) = network.get("/v2.0/ports", params={
        "device_id": server_id}).json()["ports"]
    return port


def _public_id(network):
    (public,) = network.get("/v2.0/networks", params={
        "router:external": "True"}).json()["networks"]
    return public["id"]


def _refused(address, port=2222):
    try:
        socket.create_connection((address, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# -- the catalog ------------------------------------------------------------------


def test_catalog_has_block_storage_but_no_network_by_default(cloud):
    catalog = _catalog(cloud)
    assert {"block-storage", "volumev3"} <= set(catalog)
    assert "network" not in catalog
    project_id = cloud.session().get_project_id()
    for kind in ("block-storage", "volumev3"):
        urls = {e["url"] for e in catalog[kind]["endpoints"]}
        assert urls == {_base(cloud) + "/volume/v3/" + project_id}
    assert catalog["block-storage"]["id"] != catalog["volumev3"]["id"]
    with pytest.raises(ksa_exc.EndpointNotFound):
        cloud.session().get_endpoint(service_type="network",
                                     interface="public")
    assert requests.get(_base(cloud) + "/networking").status_code == 404


def test_block_storage_can_be_switched_off(make_clouds, cloud_config):
    lc = make_clouds({"clouds": [cloud_config(**{"block-storage": False})]})
    cloud = lc["local"]
    assert set(_catalog(cloud)) == {"identity", "compute", "image"}
    assert requests.get(_base(cloud) + "/volume/").status_code == 404
    assert cloud.info()["services"] == ["identity", "compute", "image"]


# -- block storage --------------------------------------------------------------


def test_volume_version_documents_and_discovery(cloud):
    resp = requests.get(_base(cloud) + "/volume/")
    assert resp.status_code == 300          # cinder's VersionsController.all
    (v3,) = resp.json()["versions"]
    assert (v3["id"], v3["status"]) == ("v3.0", "CURRENT")
    assert v3["min_version"] == "3.0" and v3["version"] == "3.71"
    assert {"rel": "self", "href": _base(cloud) + "/volume/v3/"} in \
        v3["links"]
    assert v3["media-types"][0]["type"] == \
        "application/vnd.openstack.volume+json;version=3"
    resp = requests.get(_base(cloud) + "/volume/v3/")
    assert resp.status_code == 200 and resp.json() == {"versions": [v3]}

    session = cloud.session()
    data = session.get_endpoint_data(service_type="block-storage",
                                     interface="public", min_version="3",
                                     max_version="3.latest")
    assert data.api_version == (3, 0)
    assert data.min_microversion == (3, 0)
    assert data.max_microversion == (3, 71)
    assert data.url == "%s/volume/v3/%s" % (_base(cloud),
                                             session.get_project_id())


def test_volume_limits_and_the_empty_volume_calls(cloud):
    for kind in ("block-storage", "volumev3"):
        resp = cloud.adapter(kind).get("/limits")
        assert resp.status_code == 200
        limits = resp.json()["limits"]
        assert limits["rate"] == []
        assert set(limits["absolute"]) == LIMIT_KEYS
        assert limits["absolute"]["maxTotalVolumes"] == 10
        assert limits["absolute"]["maxTotalVolumeGigabytes"] == 1000
        assert all(v == 0 for k, v in limits["absolute"].items()
                   if k.startswith("total"))
    assert cloud.calls("GET /volume/v3/{project_id}/limits") == 2

    volume = cloud.adapter("block-storage")
    resp = volume.get("/volumes/detail", microversion="3.60")
    assert resp.json() == {"volumes": []}
    assert resp.headers["OpenStack-API-Version"] == "volume 3.60"
    assert volume.get("/volumes").json() == {"volumes": []}
    assert volume.get("/snapshots/detail").json() == {"snapshots": []}
    assert volume.get("/backups/detail").json() == {"backups": []}
    (vtype,) = volume.get("/types").json()["volume_types"]
    assert vtype["name"] == "__DEFAULT__" and vtype["is_public"] is True
    assert volume.get("/types/" + vtype["id"]).json()["volume_type"] == vtype

    resp = volume.get("/volumes/1234", raise_exc=False)
    assert resp.status_code == 404
    assert resp.json()["itemNotFound"]["message"] == \
        "Volume 1234 could not be found."
    resp = volume.get("/limits", microversion="3.99", raise_exc=False)
    assert resp.status_code == 406 and "notAcceptable" in resp.json()

    base = _base(cloud) + "/volume/v3/"
    token = cloud.session().get_token()
    # without the project id in the path too (cinder 3.67)
    resp = requests.get(base + "limits", headers={"X-Auth-Token": token})
    assert resp.json()["limits"]["absolute"]["maxTotalSnapshots"] == 10
    resp = requests.get(base + "0" * 32 + "/limits",
                        headers={"X-Auth-Token": token})
    assert resp.status_code == 400
    assert resp.json()["badRequest"]["message"] == "Malformed request url"
    assert requests.get(base + "limits").status_code == 401


# -- the network service: discovery, networks, subnets -------------------------------


def test_network_catalog_and_version_discovery(netcloud):
    catalog = _catalog(netcloud)
    assert {e["url"] for e in catalog["network"]["endpoints"]} == \
        {_base(netcloud) + "/networking"}
    resp = requests.get(_base(netcloud) + "/networking")
    assert resp.status_code == 200
    assert resp.json() == {"versions": [{
        "id": "v2.0", "status": "CURRENT", "links": [{
            "rel": "self", "href": _base(netcloud) + "/networking/v2.0/"}]}]}
    data = netcloud.session().get_endpoint_data(
        service_type="network", interface="public", min_version="2.0",
        max_version="2.latest")
    assert data.api_version == (2, 0)
    assert data.url.rstrip("/") == _base(netcloud) + "/networking/v2.0"
    info = netcloud.info()
    assert info["services"][-1] == "networking"
    assert info["fixed_range"] == str(ipaddress.IPv4Network(
        info["address_range"]).subnets(1).__next__())


def test_networks_and_subnets_with_filters(netcloud, network):
    info = netcloud.info()
    networks = network.get("/v2.0/networks").json()["networks"]
    by_name = {n["name"]: n for n in networks}
    assert set(by_name) == {"private", "public"}
    private, public = by_name["private"], by_name["public"]
    assert private["router:external"] is False
    assert public["router:external"] is True
    assert private["project_id"] == netcloud.session().get_project_id()
    assert private["status"] == "ACTIVE" and private["admin_state_up"]

    resp = network.get("/v2.0/networks", params={"router:external": "False"})
    assert [n["id"] for n in resp.json()["networks"]] == [private["id"]]
    resp = network.get("/v2.0/networks", params={
        "name": ["private", "public"], "fields": ["id", "name"]})
    assert sorted(resp.json()["networks"], key=lambda n: n["name"]) == [
        {"id": private["id"], "name": "private"},
        {"id": public["id"], "name": "public"}]
    resp = network.get("/v2.0/networks", params={"limit": 1})
    assert len(resp.json()["networks"]) == 1
    assert resp.json()["networks_links"][0]["rel"] == "next"
    assert network.get("/v2.0/networks/" + public["id"]).json()[
        "network"] == public
    _neutron_error(network.get("/v2.0/networks/nope", raise_exc=False),
                   404, "NetworkNotFound")
    _neutron_error(network.get("/v2.0/networks", params={"colour": "red"},
                               raise_exc=False), 400)

    subnets = {s["network_id"]: s for s in
               network.get("/v2.0/subnets").json()["subnets"]}
    fixed = ipaddress.IPv4Network(info["fixed_range"])
    assert subnets[private["id"]]["cidr"] == str(fixed)
    assert subnets[private["id"]]["gateway_ip"] == str(fixed[1])
    assert subnets[public["id"]]["cidr"] == info["floating_range"]
    assert private["subnets"] == [subnets[private["id"]]["id"]]
    resp = network.get("/v2.0/subnets", params={"network_id": public["id"]})
    assert [s["id"] for s in resp.json()["subnets"]] == public["subnets"]
    subnet_id = public["subnets"][0]
    assert network.get("/v2.0/subnets/" + subnet_id).json()["subnet"][
        "ip_version"] == 4
    assert {e["alias"] for e in network.get("/v2.0/extensions").json()[
        "extensions"]} >= {"external-net", "fip-port-details"}


def test_ports_follow_the_servers(netcloud, network, netboot):
    first, second = netboot("p1"), netboot("p2")
    fixed = ipaddress.IPv4Network(netcloud.info()["fixed_range"])
    port = _port_of(network, first.id)
    address = first.addresses["private"][0]
    assert port["fixed_ips"][0]["ip_address"] == address["addr"]
    assert ipaddress.IPv4Address(address["addr"]) in fixed
    assert address["addr"] != str(fixed[1])         # the gateway
    assert port["mac_address"] == address["OS-EXT-IPS-MAC:mac_addr"]
    assert port["device_owner"] == "compute:nova"
    assert port["status"] == "ACTIVE"
    assert network.get("/v2.0/ports/" + port["id"]).json()["port"] == port
    private = port["network_id"]
    resp = network.get("/v2.0/ports", params={"network_id": private})
    assert {p["device_id"] for p in resp.json()["ports"]} == \
        {first.id, second.id}
    resp = network.get("/v2.0/ports", params={
        "fixed_ips": "ip_address=" + address["addr"]})
    assert [p["id"] for p in resp.json()["ports"]] == [port["id"]]

    netcloud.nova("2.1").servers.delete(first.id)
    assert network.get("/v2.0/ports", params={
        "device_id": first.id}).json()["ports"] == []
    _neutron_error(network.get("/v2.0/ports/" + port["id"], raise_exc=False),
                   404, "PortNotFound")


# -- floating IPs --------------------------------------------------------------------


def test_floating_ip_reaches_the_server_over_ssh(netcloud, network, netboot,
                                                 ssh_key):
    threads_before = len(_fip_threads())
    server = netboot("fip-node")
    port = _port_of(network, server.id)
    public_id = _public_id(network)
    resp = network.post("/v2.0/floatingips", json={"floatingip": {
        "floating_network_id": public_id, "port_id": port["id"]}})
    assert resp.status_code == 201
    fip = resp.json()["floatingip"]
    address = fip["floating_ip_address"]
    assert fip["status"] == "ACTIVE" and fip["port_id"] == port["id"]
    assert fip["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
    assert fip["floating_network_id"] == public_id
    assert fip["port_details"]["device_id"] == server.id
    assert ipaddress.IPv4Address(address) in \
        ipaddress.IPv4Network(netcloud.info()["floating_range"])
    assert (address, 2222) in listening_sockets()

    client = ssh_connect(address, 2222, ssh_key.key)
    try:
        status, out, _ = ssh_run(client, "head -c 300000 /dev/zero | wc -c;"
                                 " cat etc/issue")
        assert status == 0
        assert out.split("\n")[:2] == ["300000", "Ubuntu 12.04 LTS localcloud"]
    finally:
        client.close()
    (record,) = [s for s in netcloud.servers() if s["id"] == server.id]
    assert record["floating_addresses"] == [address]
    listed = network.get("/v2.0/floatingips", params={
        "floating_ip_address": address}).json()["floatingips"]
    assert [f["id"] for f in listed] == [fip["id"]]
    assert network.get("/v2.0/floatingips", params={
        "port_id": port["id"]}).json()["floatingips"] == listed

    # detach: the address stops answering, the forwarder thread is gone
    resp = network.put("/v2.0/floatingips/" + fip["id"],
                       json={"floatingip": {"port_id": None}})
    detached = resp.json()["floatingip"]
    assert detached["port_id"] is None and detached["fixed_ip_address"] is None
    assert detached["status"] == "DOWN" and detached["port_details"] is None
    assert _refused(address)
    assert len(_fip_threads()) == threads_before
    assert netcloud.nova("2.1").servers.get(server.id).addresses[
        "private"] == server.addresses["private"]

    # re-attach, then delete
    resp = network.put("/v2.0/floatingips/" + fip["id"], json={
        "floatingip": {"port_id": port["id"]}})
    assert resp.json()["floatingip"]["status"] == "ACTIVE"
    ssh_connect(address, 2222, ssh_key.key).close()
    assert network.delete("/v2.0/floatingips/" + fip["id"]).status_code == 204
    assert network.get("/v2.0/floatingips").json() == {"floatingips": []}
    assert _refused(address)
    assert len(_fip_threads()) == threads_before
    _neutron_error(network.get("/v2.0/floatingips/" + fip["id"],
                               raise_exc=False), 404, "FloatingIPNotFound")
    events = netcloud.stats()["events"]
    assert events["floating-ips-created"] == 1
    assert events["floating-ips-attached"] == 2
    assert events["floating-ips-deleted"] == 1


def test_nova_lists_the_floating_address(netcloud, network, netboot):
    server = netboot("nova-fip")
    port = _port_of(network, server.id)
    fip = network.post("/v2.0/floatingips", json={"floatingip": {
        "floating_network_id": _public_id(network),
        "port_id": port["id"]}}).json()["floatingip"]
    fixed, floating = netcloud.nova("2.1").servers.get(server.id).addresses[
        "private"]
    assert fixed["OS-EXT-IPS:type"] == "fixed"
    assert floating == dict(fixed, **{
        "addr": fip["floating_ip_address"], "OS-EXT-IPS:type": "floating"})


def test_floating_ip_errors_and_unattached_ips(netcloud, network, netboot):
    server = netboot("fip-errors")
    port = _port_of(network, server.id)
    public_id = _public_id(network)
    private_id = port["network_id"]

    def create(**args):
        return network.post("/v2.0/floatingips", json={"floatingip": args},
                            raise_exc=False)

    spare = create(floating_network_id=public_id).json()["floatingip"]
    assert spare["status"] == "DOWN" and spare["port_id"] is None
    assert _refused(spare["floating_ip_address"])
    _neutron_error(create(floating_network_id=private_id), 400)
    _neutron_error(create(floating_network_id="nope"), 404, "NetworkNotFound")
    _neutron_error(create(floating_network_id=public_id, port_id="nope"),
                   404, "PortNotFound")
    _neutron_error(create(floating_network_id=public_id, port_id=port["id"],
                          fixed_ip_address="127.0.0.9"), 400)
    taken = create(floating_network_id=public_id,
                   floating_ip_address=spare["floating_ip_address"])
    _neutron_error(taken, 409)
    attached = create(floating_network_id=public_id, port_id=port["id"])
    assert attached.status_code == 201
    _neutron_error(create(floating_network_id=public_id, port_id=port["id"]),
                   409, "FloatingIPPortAlreadyAssociated")
    resp = network.put("/v2.0/floatingips/" + spare["id"], raise_exc=False,
                       json={"floatingip": {"port_id": port["id"]}})
    _neutron_error(resp, 409, "FloatingIPPortAlreadyAssociated")
    assert network.get("/v2.0/floatingips", params={
        "status": "DOWN"}).json()["floatingips"][0]["id"] == spare["id"]
    _neutron_error(network.delete("/v2.0/floatingips/nope", raise_exc=False),
                   404)
    resp = requests.get(_base(netcloud) + "/networking/v2.0/floatingips")
    assert resp.status_code == 401


def test_deleting_the_server_disassociates_its_floating_ip(netcloud, network,
                                                          netboot):
    server = netboot("fip-gone")
    port = _port_of(network, server.id)
    fip = network.post("/v2.0/floatingips", json={"floatingip": {
        "floating_network_id": _public_id(network),
        "port_id": port["id"]}}).json()["floatingip"]
    address = fip["floating_ip_address"]
    assert (address, 2222) in listening_sockets()
    netcloud.nova("2.1").servers.delete(server.id)
    after = network.get("/v2.0/floatingips/" + fip["id"]).json()["floatingip"]
    assert after["port_id"] is None and after["status"] == "DOWN"
    assert (address, 2222) not in listening_sockets()
    assert not _fip_threads()


def test_the_floating_range_and_its_checks(make_clouds, cloud_config):
    def parse(**keys):
        return config_mod.parse({"clouds": [dict({"name": "a"}, **keys)]},
                                "t.yaml")

    cloud = parse(**{"network-service": True,
                     "address-range": "127.30.0.0/24",
                     "floating-range": "127.31.0.0/24"}).clouds[0]
    assert str(cloud.fixed_range) == "127.30.0.0/24"
    assert str(cloud.floating_range) == "127.31.0.0/24"
    plain = parse(**{"address-range": "127.30.0.0/24"}).clouds[0]
    assert plain.floating_range is None and plain.block_storage is True
    assert str(plain.fixed_range) == "127.30.0.0/24"
    with pytest.raises(config_mod.ConfigError, match=r"clouds\[a\]\."
                       r"floating-range: is only used with network-service"):
        parse(**{"floating-range": "127.31.0.0/24"})
    with pytest.raises(config_mod.ConfigError, match="cannot be used with "
                       "network-service"):
        parse(**{"network-service": True, "floating-ips": True})
    with pytest.raises(config_mod.ConfigError, match=r"127\.30\.0\.0/25 "
                       r"overlaps the address-range 127\.30\.0\.0/24 of "
                       "cloud a"):
        parse(**{"network-service": True, "address-range": "127.30.0.0/24",
                 "floating-range": "127.30.0.0/25"})
    with pytest.raises(config_mod.ConfigError, match="expected true or "
                       "false"):
        parse(**{"network-service": "yes"})

    lc = make_clouds({"clouds": [cloud_config(**{
        "network-service": True, "floating-range": "127.63.7.0/29"})]})
    network = lc["local"].adapter("network")
    public = [s for s in network.get("/v2.0/subnets").json()["subnets"]
              if s["name"] == "public-subnet"][0]
    assert public["cidr"] == "127.63.7.0/29"
    assert public["allocation_pools"] == [{"start": "127.63.7.2",
                                           "end": "127.63.7.6"}]
    public_id = public["network_id"]
    created = [network.post("/v2.0/floatingips", json={"floatingip": {
        "floating_network_id": public_id}}).json()["floatingip"]
        ["floating_ip_address"] for _ in range(5)]
    # .0 (x.x.x.0 and the network), .1 (gateway), .7 (broadcast) are never
    # handed out
    assert sorted(created) == ["127.63.7.%d" % i for i in range(2, 7)]
    _neutron_error(network.post("/v2.0/floatingips", raise_exc=False, json={
        "floatingip": {"floating_network_id": public_id}}), 409,
        "IpAddressGenerationFailure")


def test_floating_ip_in_a_subprocess_cloud(make_clouds, cloud_config,
                                           ssh_key):
    lc = make_clouds({"clouds": [cloud_config(**{"network-service": True})]},
                     subprocess=True)
    cloud = lc["local"]
    assert cloud.info()["floating_range"] is not None
    nova = cloud.nova("2.1")
    nova.keypairs.create("k", public_key=ssh_key.public)
    server = wait_for_server(nova, nova.servers.create(
        "sub-fip", cloud.images()[0]["id"], "1", key_name="k").id)
    network = cloud.adapter("network")
    fip = network.post("/v2.0/floatingips", json={"floatingip": {
        "floating_network_id": _public_id(network),
        "port_id": _port_of(network, server.id)["id"]}}).json()["floatingip"]
    client = ssh_connect(fip["floating_ip_address"], 2222, ssh_key.key)
    try:
        assert ssh_run(client, "echo through the floating ip")[1] == \
            "through the floating ip\n"
    finally:
        client.close()
    (record,) = cloud.servers()
    assert record["floating_addresses"] == [fip["floating_ip_address"]]
    # the fixture's exit checks that SIGTERM stops everything, exit status 0
