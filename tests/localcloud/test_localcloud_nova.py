"""Nova v2.1 through the real python-novaclient: every call the pool uses,
the shapes that change with the microversion, and each error body."""

import time

import pytest
import requests
from novaclient import api_versions
from novaclient import exceptions as nova_exc

from localcloud.testing import wait_for_image, wait_for_server


def test_server_lifecycle_create_list_get_delete(nova, base_image):
    server = nova.servers.create("vm-1", base_image.id, "1",
                                 meta={"node-id": "42", "provider": "local"})
    assert nova.servers.get(server.id).status == "BUILD"
    servers = nova.servers.list()
    assert [s.name for s in servers] == ["vm-1"]
    listed = servers[0]
    assert listed.metadata == {"node-id": "42", "provider": "local"}
    assert listed.tenant_id and listed.user_id and listed.created
    assert listed.flavor["id"] == "1"
    assert listed.flavor["links"][0]["rel"] == "bookmark"
    assert listed.image["id"] == base_image.id
    assert getattr(listed, "OS-EXT-STS:vm_state") in ("building", "active")

    active = wait_for_server(nova, listed.id)
    assert active.status == "ACTIVE"
    assert getattr(active, "OS-EXT-STS:task_state") is None
    assert getattr(active, "OS-EXT-STS:power_state") == 1
    assert getattr(active, "OS-SRV-USG:launched_at")
    (address,) = active.networks["private"]
    entry = active.addresses["private"][0]
    assert entry["version"] == 4 and entry["OS-EXT-IPS:type"] == "fixed"
    assert entry["OS-EXT-IPS-MAC:mac_addr"].startswith("fa:16:3e:")
    assert address.startswith("127.")
    assert not hasattr(active, "fault")

    nova.servers.delete(active.id)
    with pytest.raises(nova_exc.NotFound):
        nova.servers.get(active.id)
    assert nova.servers.list() == []


def test_list_filters_name_regex_and_status(nova, boot, cloud, base_image):
    boot("web-1")
    boot("web-2")
    boot("db-1")
    cloud.set_faults({"stuck-build-rate": 1.0})
    nova.servers.create("web-3", base_image.id, "1")

    def names(**opts):
        return sorted(s.name for s in nova.servers.list(search_opts=opts))

    assert names(name="^web") == ["web-1", "web-2", "web-3"]
    assert names(name="-1$") == ["db-1", "web-1"]
    assert names(name="web", status="ACTIVE") == ["web-1", "web-2"]
    assert names(status="BUILD") == ["web-3"]
    assert cloud.calls("GET /compute/v2.1/servers/detail") == 4


def test_paging_with_limit_and_marker(make_clouds, cloud_config):
    lc = make_clouds({"clouds": [cloud_config(**{"max-page-size": 2})]})
    local = lc["local"]
    nova = local.nova("2.1")
    image = local.images()[0]["id"]
    created = [nova.servers.create("p-%d" % i, image, "1").id
               for i in range(5)]
    local.reset_stats()
    everything = nova.servers.list(limit=-1)
    # newest first, as nova sorts by created_at desc
    assert [s.id for s in everything] == list(reversed(created))
    # pages of 2, 2, 1 and the empty page that stops novaclient
    assert local.calls("GET /compute/v2.1/servers/detail") == 4

    page = nova.servers.list(limit=2)
    assert len(page) == 2
    resp, body = nova.client.get("/servers/detail?limit=2")
    assert body["servers_links"][0]["rel"] == "next"
    assert "marker=%s" % body["servers"][-1]["id"] in \
        body["servers_links"][0]["href"]
    resp, body = nova.client.get("/servers?marker=%s" % created[1])
    assert [s["id"] for s in body["servers"]] == [created[0]]
    assert set(body["servers"][0]) == {"id", "name", "links"}


def test_flavors_list_and_get_by_microversion(cloud):
    flavors = cloud.nova("2.1").flavors.list()
    assert [f.name for f in flavors][:2] == ["m1.tiny", "m1.small"]
    tiny = flavors[0]
    assert (tiny.id, tiny.ram, tiny.vcpus, tiny.disk) == ("1", 512, 1, 1)
    assert tiny.swap == "" and tiny.is_public
    assert not hasattr(tiny, "extra_specs")
    newer = cloud.nova("2.61").flavors.get("3")
    assert newer.description is None
    assert newer._info["extra_specs"] == {}
    assert [f.name for f in cloud.nova("2.1").flavors.list(min_ram=8192)] == \
        ["m1.large", "m1.xlarge"]


def test_embedded_flavor_and_newer_fields_from_2_47(cloud, boot):
    server = boot("embedded")
    new = cloud.nova("2.96").servers.get(server.id)
    assert new.flavor == {"vcpus": 1, "ram": 512, "disk": 1, "ephemeral": 0,
                          "swap": 0, "original_name": "m1.tiny",
                          "extra_specs": {}}
    assert new.locked is False and new.tags == [] and new.description is None
    assert new.pinned_availability_zone is None
    assert new.server_groups == []
    old = cloud.nova("2.46").servers.get(server.id)
    assert old.flavor["id"] == "1"
    assert not hasattr(old, "pinned_availability_zone")


def test_keypairs_by_microversion(cloud, ssh_key):
    old = cloud.nova("2.1")
    generated = old.keypairs.create("gen")
    assert generated.private_key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert generated.public_key.startswith("ssh-rsa ")
    assert len(generated.fingerprint.split(":")) == 16
    assert not hasattr(generated, "type")

    new = cloud.nova("2.2")
    imported = new.keypairs.create("imported", public_key=ssh_key.public)
    assert imported.type == "ssh"
    assert not hasattr(imported, "private_key")
    assert imported.public_key == ssh_key.public

    with pytest.raises(nova_exc.Conflict) as conflict:
        new.keypairs.create("imported", public_key=ssh_key.public)
    assert "Key pair 'imported' already exists." in str(conflict.value)
    for junk in ("ssh-rsa bm90IGEga2V5",
                 # truncated: paramiko would take it, nova (cryptography) not
                 "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHb2Y2k1 test"):
        with pytest.raises(nova_exc.BadRequest) as invalid:
            new.keypairs.create("junk", public_key=junk)
        assert invalid.value.message == ("Keypair data is invalid: failed "
                                         "to generate fingerprint")

    latest = cloud.nova("2.92")
    with pytest.raises(TypeError):      # the client itself requires the key
        latest.keypairs.create("nokey")
    assert latest.keypairs.create("k.with.dots@x",
                                  public_key=ssh_key.public).name == \
        "k.with.dots@x"

    assert sorted(k.name for k in new.keypairs.list()) == \
        ["gen", "imported", "k.with.dots@x"]
    shown = new.keypairs.get("imported")
    assert shown.user_id and shown.created_at and shown.type == "ssh"

    cloud.reset_stats()
    old.keypairs.delete("gen")
    new.keypairs.delete("imported")
    assert cloud.stats()["responses"] == {"202": 1, "204": 1}
    with pytest.raises(nova_exc.NotFound) as missing:
        new.keypairs.get("imported")
    assert "Keypair imported not found for user" in str(missing.value)


def test_limits_show_quota_and_usage(cloud, boot):
    nova = cloud.nova("2.1")
    absolute = {l.name: l.value for l in nova.limits.get().absolute}
    assert absolute["maxTotalInstances"] == -1
    assert absolute["totalInstancesUsed"] == 0
    assert "maxPersonality" in absolute and "maxSecurityGroups" in absolute
    cloud.set_faults(quota={"instances": 5, "cores": 8, "ram": 4096})
    boot("one")
    absolute = {l.name: l.value for l in nova.limits.get().absolute}
    assert (absolute["maxTotalInstances"], absolute["maxTotalCores"],
            absolute["maxTotalRAMSize"]) == (5, 8, 4096)
    assert (absolute["totalInstancesUsed"], absolute["totalCoresUsed"],
            absolute["totalRAMUsed"]) == (1, 1, 512)
    newer = {l.name for l in cloud.nova("2.57").limits.get().absolute}
    assert "maxPersonality" not in newer
    assert "maxSecurityGroups" not in newer


# -- microversions ---------------------------------------------------------------------


def test_version_headers_are_echoed(cloud):
    nova = cloud.nova("2.53")
    resp, _ = nova.client.get("/flavors")
    assert resp.headers["OpenStack-API-Version"] == "compute 2.53"
    assert resp.headers["X-OpenStack-Nova-API-Version"] == "2.53"
    assert "OpenStack-API-Version" in resp.headers["Vary"]
    assert resp.headers["x-compute-request-id"].startswith("req-")
    resp, _ = cloud.nova("2").client.get("/flavors")     # no header: 2.1
    assert resp.headers["X-OpenStack-Nova-API-Version"] == "2.1"


def test_microversion_negotiation_picks_highest_common(cloud):
    nova = cloud.nova("2.1")
    chosen = api_versions.discover_version(nova,
                                           api_versions.APIVersion("2.latest"))
    assert chosen == api_versions.APIVersion("2.96")
    data = cloud.session().get_endpoint_data(service_type="compute",
                                             discover_versions=True)
    assert data.min_microversion == (2, 1)
    assert data.max_microversion == (2, 96)


def test_unsupported_microversion_gets_406(cloud):
    nova = cloud.nova("2.1")
    nova.api_version = api_versions.APIVersion("2.200")
    with pytest.raises(nova_exc.NotAcceptable) as error:
        nova.flavors.list()
    assert error.value.message == ("Version 2.200 is not supported by the "
                                   "API. Minimum is 2.1 and maximum is 2.96.")
    resp = cloud.session().get(
        cloud.session().get_endpoint(service_type="compute") + "/flavors",
        headers={"OpenStack-API-Version": "compute 2.0"}, raise_exc=False)
    assert resp.status_code == 406
    assert resp.json() == {"computeFault": {
        "code": 406, "message": "Version 2.0 is not supported by the API. "
        "Minimum is 2.1 and maximum is 2.96."}}


def test_create_image_answer_below_and_from_2_45(cloud, boot):
    server = boot("template")
    glance = cloud.glance()
    old_id = cloud.nova("2.44").servers.create_image(server.id, "snap-old",
                                                     {"provider": "local"})
    wait_for_image(glance, old_id)
    new_id = cloud.nova("2.45").servers.create_image(server.id, "snap-new")
    assert old_id != new_id
    assert wait_for_image(glance, new_id).status == "active"
    assert glance.images.get(old_id).provider == "local"
    assert glance.images.get(old_id).image_type == "snapshot"
    # below 2.45 the id comes from the Location header only
    cloud.reset_stats()
    nova = cloud.nova("2.1")
    resp, body = nova.client.post("/servers/%s/action" % server.id,
                                  body={"createImage": {"name": "x",
                                                        "metadata": {}}})
    assert resp.status_code == 202 and body is None
    assert resp.headers["Location"].rsplit("/", 1)[-1] in \
        [i["id"] for i in cloud.images()]
    _wait_idle(nova, server.id)
    resp, body = cloud.nova("2.45").client.post(
        "/servers/%s/action" % server.id,
        body={"createImage": {"name": "y", "metadata": {}}})
    assert set(body) == {"image_id"} and "Location" not in resp.headers


def _wait_idle(nova, server_id, timeout=5):
    """Wait until the server's task_state is None again."""
    deadline = time.monotonic() + timeout
    while getattr(nova.servers.get(server_id), "OS-EXT-STS:task_state"):
        assert time.monotonic() < deadline, "server never became idle"
        time.sleep(0.05)


# -- error bodies ----------------------------------------------------------------------


def test_404_item_not_found(nova):
    with pytest.raises(nova_exc.NotFound) as error:
        nova.servers.get("00000000-0000-0000-0000-000000000000")
    assert error.value.code == 404
    assert error.value.message == ("Instance 00000000-0000-0000-0000-"
                                   "000000000000 could not be found.")
    assert error.value.request_id.startswith("req-")
    session = nova.client.session
    raw = session.get(nova.client.get_endpoint() + "/servers/nope",
                      raise_exc=False)
    assert raw.headers["Content-Type"] == "application/json"
    assert raw.json() == {"itemNotFound": {
        "code": 404, "message": "Instance nope could not be found."}}


def test_400_bad_request(nova, base_image):
    with pytest.raises(nova_exc.BadRequest) as error:
        nova.servers.create("vm", base_image.id, "99")
    assert error.value.message == "Flavor 99 could not be found."
    with pytest.raises(nova_exc.BadRequest) as error:
        nova.servers.create("vm", base_image.id, "1", key_name="missing")
    assert error.value.message == "Invalid key_name provided."
    with pytest.raises(nova_exc.BadRequest) as error:
        nova.servers.create("vm", "4b7ad7a4-7f4e-4c1e-8e3f-6c0b9c1a0a0a", "1")
    assert error.value.message == "Can not find requested image"
    with pytest.raises(nova_exc.BadRequest) as error:
        nova.servers.list(marker="zz")
    assert error.value.message == "marker [zz] not found"
    server = nova.servers.create("vm", base_image.id, "1")
    with pytest.raises(nova_exc.BadRequest) as error:
        nova.client.post("/servers/%s/action" % server.id,
                         body={"os-resetNetwork": None})
    assert error.value.message == "There is no such action: os-resetNetwork"


def test_networks_required_from_2_37(cloud, base_image):
    nova = cloud.nova("2.37")
    server = nova.servers.create("auto", base_image.id, "1", nics="auto")
    assert server.id
    resp = nova.client.session.post(
        nova.client.get_endpoint() + "/servers",
        json={"server": {"name": "x", "imageRef": base_image.id,
                         "flavorRef": "1"}},
        headers={"OpenStack-API-Version": "compute 2.37"}, raise_exc=False)
    assert resp.status_code == 400
    assert "'networks' is a required property" in \
        resp.json()["badRequest"]["message"]


def test_403_quota_exceeded_messages(cloud, boot):
    nova = cloud.nova("2.1")
    cloud.set_faults(quota={"instances": 2})
    boot("a")
    boot("b")
    with pytest.raises(nova_exc.Forbidden) as error:
        boot("c")
    assert error.value.code == 403
    assert error.value.message == ("Quota exceeded for instances: Requested "
                                   "1, but already used 2 of 2 instances")
    cloud.set_faults(quota={"instances": None, "cores": 2, "ram": 1024})
    with pytest.raises(nova_exc.Forbidden) as error:
        nova.servers.create("big", cloud.images()[0]["id"], "3")
    assert error.value.message == ("Quota exceeded for cores, ram: Requested "
                                   "2, 4096, but already used 2, 1024 of 2, "
                                   "1024 cores, ram")


def test_500_compute_fault(cloud, nova):
    nova.flavors.list()             # authenticate first
    cloud.set_faults({"api-error-rate": 1.0})
    with pytest.raises(nova_exc.ClientException) as error:
        nova.servers.list()
    assert type(error.value) is nova_exc.ClientException
    assert error.value.code == 500
    assert error.value.message.startswith("Unexpected API Error.")
    cloud.set_faults({"api-error-rate": 0.0})
    assert nova.servers.list() == []


def test_429_over_limit_with_retry_after(cloud, nova):
    nova.flavors.list()
    cloud.set_faults({"api-overlimit-rate": 1.0,
                      "api-overlimit-retry-after": 7})
    with pytest.raises(nova_exc.RateLimit) as error:
        nova.servers.list()
    assert error.value.code == 429
    assert error.value.retry_after == 7
    cloud.set_faults({"api-overlimit-rate": 0.0})
    raw = nova.client.session.get(nova.client.get_endpoint() + "/servers",
                                  raise_exc=False)
    assert raw.status_code == 200


def test_409_create_image_while_building(cloud, nova, base_image):
    cloud.set_faults({"stuck-build-rate": 1.0})
    server = nova.servers.create("stuck", base_image.id, "1")
    with pytest.raises(nova_exc.Conflict) as error:
        nova.servers.create_image(server.id, "too-early")
    assert "while it is in vm_state building" in error.value.message


def test_console_output_carries_host_key(cloud, boot):
    server = boot("console")
    output = server.get_console_output()
    (record,) = [s for s in cloud.servers() if s["id"] == server.id]
    assert record["host_key"].startswith("ecdsa-sha2-nistp256 ")
    assert record["host_key"] in output.splitlines()
    assert "-----BEGIN SSH HOST KEY KEYS-----" in output


def test_version_documents(cloud):
    compute = cloud.auth_url.replace("/identity", "/compute")
    versions = requests.get(compute).json()["versions"]
    assert [(v["id"], v["status"]) for v in versions] == \
        [("v2.0", "DEPRECATED"), ("v2.1", "CURRENT")]
    assert versions[1]["version"] == "2.96"
    assert versions[1]["min_version"] == "2.1"
    for path in ("/v2.1", "/v2.1/"):
        doc = requests.get(compute + path).json()["version"]
        assert doc["version"] == "2.96" and doc["id"] == "v2.1"
        assert doc["media-types"][0]["type"] == \
            "application/vnd.openstack.compute+json;version=2.1"
