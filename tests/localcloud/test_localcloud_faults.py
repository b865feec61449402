"""Each fault knob, observed through the real clients, plus the admin
endpoint that turns them while the cloud runs."""

import json
import socket
import time
import urllib.error
import urllib.request

import paramiko
import pytest
from glanceclient import exc as glance_exc
from keystoneauth1 import exceptions as ksa_exc
from novaclient import exceptions as nova_exc

from localcloud.testing import ssh_connect, wait_for_image, wait_for_server


def _address(server):
    return server.networks["private"][0]


def test_boot_delay(cloud, nova, boot):
    cloud.set_faults({"boot-delay": {"min": 0.4, "max": 0.4}})
    started = time.monotonic()
    server = boot("slow", wait=False)
    assert nova.servers.get(server.id).status == "BUILD"
    assert getattr(nova.servers.get(server.id),
                   "OS-EXT-STS:task_state") == "spawning"
    assert nova.servers.get(server.id).networks == {}
    wait_for_server(nova, server.id)
    assert time.monotonic() - started >= 0.4


def test_boot_error_rate(cloud, nova, boot):
    cloud.set_faults({"boot-error-rate": 1.0})
    server = boot("doomed")
    assert server.status == "ERROR"
    assert server.fault["code"] == 500
    assert server.fault["message"].startswith("No valid host was found.")
    assert server.fault["created"].endswith("Z")
    assert server.networks == {}
    nova.servers.delete(server.id)
    assert nova.servers.list() == []


def test_no_network_rate(cloud, boot, ssh_key):
    cloud.set_faults({"no-network-rate": 1.0})
    server = boot("silent")
    assert server.status == "ACTIVE"
    address = _address(server)
    socket.create_connection((address, 2222), timeout=2).close()  # TCP: yes
    with pytest.raises(paramiko.SSHException):                   # SSH: no
        ssh_connect(address, 2222, ssh_key.key, timeout=0.5)
    assert [s["outcome"] for s in cloud.servers()] == ["no-network"]


def test_stuck_build_rate(cloud, nova, boot):
    cloud.set_faults({"stuck-build-rate": 1.0})
    server = boot("stuck", wait=False)
    time.sleep(0.3)
    assert nova.servers.get(server.id).status == "BUILD"
    nova.servers.delete(server.id)          # deleting a stuck server works
    assert nova.servers.list() == []


def test_api_latency(cloud, nova):
    nova.flavors.list()
    cloud.set_faults({"api-latency": 0.3})
    started = time.monotonic()
    nova.flavors.list()
    assert time.monotonic() - started >= 0.3
    cloud.set_faults({"api-latency": 0})
    started = time.monotonic()
    nova.flavors.list()
    assert time.monotonic() - started < 0.3


def test_delete_latency_delays_deletes_only(cloud, nova, boot):
    cloud.set_faults({"stuck-build-rate": 1.0, "delete-latency": 0.3})
    server = boot("slow-delete", wait=False)
    started = time.monotonic()
    nova.servers.list()
    nova.flavors.list()
    assert time.monotonic() - started < 0.3          # lists and GETs: not delayed
    started = time.monotonic()
    nova.servers.delete(server.id)
    assert time.monotonic() - started >= 0.3
    spans = cloud.call_spans("DELETE /compute/v2.1/servers/{id}")
    assert len(spans) == 1 and spans[0][1] - spans[0][0] >= 0.3
    assert cloud.get_faults()["delete-latency"] == {"min": 0.3, "max": 0.3}


def test_server_report_says_when_it_turned_active(cloud, boot):
    before = time.time()
    server = boot("timed")
    (report,) = [s for s in cloud.servers() if s["id"] == server.id]
    assert before <= report["launched_at"] <= time.time()


def test_api_error_rate_is_random_but_seeded(make_clouds, cloud_config):
    def outcomes():
        lc = make_clouds({"clouds": [cloud_config(
            seed=99, faults={"api-error-rate": 0.5})]})
        session = lc["local"].session()
        compute = None
        results = []
        while compute is None:          # the token POST may fail too
            try:
                compute = session.get_endpoint(service_type="compute")
            except (ksa_exc.InternalServerError, ksa_exc.DiscoveryFailure):
                results.append("auth-500")
        for _ in range(20):
            resp = session.get(compute + "/flavors", raise_exc=False)
            results.append(resp.status_code)
        return results

    first, second = outcomes(), outcomes()
    assert first == second                      # same seed, same faults
    assert 500 in first and 200 in first


def test_quota_knob_from_config(make_clouds, cloud_config, ssh_key):
    lc = make_clouds({"clouds": [cloud_config(
        faults={"quota": {"instances": 1}})]})
    nova = lc["local"].nova("2.1")
    image = lc["local"].images()[0]["id"]
    nova.servers.create("one", image, "1")
    with pytest.raises(nova_exc.Forbidden):
        nova.servers.create("two", image, "1")
    lc["local"].set_faults(quota={"instances": 2})
    assert nova.servers.create("two", image, "1").id


def test_snapshot_delay_and_status_progression(cloud, boot):
    cloud.set_faults({"snapshot-delay": 0.5})
    server = boot("template")
    nova, glance = cloud.nova("2.45"), cloud.glance()
    image_id = nova.servers.create_image(server.id, "slow-snapshot")
    with pytest.raises(nova_exc.Conflict) as busy:       # one at a time
        nova.servers.create_image(server.id, "second")
    assert "while it is in task_state image_" in busy.value.message
    seen = set()
    started = time.monotonic()
    while True:
        status = glance.images.get(image_id).status
        seen.add(status)
        if status == "active":
            break
        assert time.monotonic() - started < 5
        time.sleep(0.05)
    assert time.monotonic() - started >= 0.45
    assert "saving" in seen and seen <= {"queued", "saving", "active"}
    assert getattr(nova.servers.get(server.id), "OS-EXT-STS:task_state") \
        is None


def test_snapshot_failure_rate(cloud, boot):
    cloud.set_faults({"snapshot-failure-rate": 1.0})
    server = boot("template")
    glance = cloud.glance()
    image_id = cloud.nova("2.45").servers.create_image(server.id, "bad")
    assert wait_for_image(glance, image_id).status == "killed"
    with pytest.raises(nova_exc.BadRequest) as error:
        boot("from-killed", image=image_id)
    assert error.value.message == "Image %s is not active." % image_id


def test_outage_refuses_connections_then_recovers(cloud, nova, boot):
    server = boot("survivor")
    glance = cloud.glance(session=nova.client.session)
    port = cloud.info()["api_port"]
    cloud.set_faults(outage=True)
    assert cloud.info()["outage"] is True
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises(ksa_exc.ConnectFailure):
        nova.servers.list()
    with pytest.raises(glance_exc.CommunicationError):
        glance.images.get(server.image["id"])
    # a new client cannot even discover keystone's versions
    with pytest.raises((ksa_exc.ConnectFailure, ksa_exc.DiscoveryFailure)):
        cloud.nova("2.1").flavors.list()
    cloud.set_faults(outage=False)
    assert [s.name for s in nova.servers.list()] == ["survivor"]
    assert cloud.info()["api_port"] == port


def test_lying_delete_lingers_for_n_list_calls(cloud, nova, boot):
    cloud.set_faults({"lying-delete-lists": 2})
    server = boot("liar")
    nova.servers.delete(server.id)          # 204, but...
    assert [s.id for s in nova.servers.list()] == [server.id]
    lingering = nova.servers.get(server.id)
    assert getattr(lingering, "OS-EXT-STS:task_state") == "deleting"
    nova.servers.delete(server.id)          # deleting again is fine
    assert [s.id for s in nova.servers.list()] == [server.id]
    assert nova.servers.list() == []
    with pytest.raises(nova_exc.NotFound):
        nova.servers.get(server.id)
    (record,) = cloud.servers()
    assert record["deleted"] and not record["lingering"]


def test_stats_count_calls_by_method_and_path(cloud, nova, boot):
    server = boot("counted")
    cloud.reset_stats()
    nova.servers.get(server.id)
    nova.servers.get(server.id)
    nova.servers.list()
    nova.servers.delete(server.id)
    stats = cloud.stats()
    assert stats["calls"] == {
        "GET /compute/v2.1/servers/{id}": 2,
        "GET /compute/v2.1/servers/detail": 1,
        "DELETE /compute/v2.1/servers/{id}": 1,
    }
    assert stats["total"] == 4
    assert stats["events"]["servers-deleted"] == 1


# -- the admin HTTP endpoint ---------------------------------------------------------


def _admin(url, method="GET", body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_admin_endpoint_faults_stats_servers(localcloud, nova, boot):
    base = localcloud.admin_url + "/clouds/local"
    status, knobs = _admin(base + "/faults")
    assert status == 200 and knobs["boot-error-rate"] == 0.0
    assert knobs["boot-delay"] == {"min": 0.05, "max": 0.05}
    status, knobs = _admin(base + "/faults", "PUT",
                           {"boot-error-rate": 1, "quota": {"cores": 4}})
    assert status == 200
    assert knobs["boot-error-rate"] == 1.0
    assert knobs["quota"] == {"instances": None, "cores": 4, "ram": None}
    assert boot("via-admin").status == "ERROR"

    status, error = _admin(base + "/faults", "PUT", {"boot-eror-rate": 1})
    assert status == 400
    assert error["error"].startswith("faults.boot-eror-rate: unknown fault "
                                     "knob; valid knobs are ")
    status, error = _admin(base + "/faults", "PUT", {"no-network-rate": 2})
    assert status == 400 and "between 0 and 1" in error["error"]

    status, stats = _admin(base + "/stats")
    assert stats["calls"]["POST /compute/v2.1/servers"] == 1
    assert _admin(base + "/stats/reset", "POST", {})[1]["total"] == 0
    status, servers = _admin(base + "/servers")
    assert [s["name"] for s in servers["servers"]] == ["via-admin"]
    status, clouds = _admin(localcloud.admin_url + "/clouds")
    assert clouds["clouds"]["local"]["auth_url"] == localcloud["local"].auth_url
    assert "password" not in json.dumps(clouds)
    assert _admin(localcloud.admin_url + "/clouds/nope/faults")[0] == 404
    status, revoked = _admin(base + "/revoke-tokens", "POST", {})
    assert status == 200 and revoked["revoked"] >= 1


# -- nonsense and paging ---------------------------------------------------------


def test_nonsense_and_paging_knobs_validate_and_merge():
    from localcloud import faults
    assert faults.validate({})["nonsense"] == {}
    assert faults.validate({})["paging"] == "normal"
    knobs = faults.validate({"nonsense": {"all": "html-200",
                                          "list-images": "missing-id"}})
    assert faults.nonsense_for(knobs, "list-images") == "missing-id"
    assert faults.nonsense_for(knobs, "show-server") == "html-200"
    knobs = faults.merge(knobs, {"nonsense": {"all": None}})
    assert knobs["nonsense"] == {"list-images": "missing-id"}
    assert faults.nonsense_for(knobs, "show-server") is None
    assert faults.merge(knobs, {"nonsense": None})["nonsense"] == {}
    for bad, message in [
            ({"nonsense": "html-200"}, "faults.nonsense: expected a mapping of call kinds"),
            ({"nonsense": {"list-everything": "html-200"}},
             "faults.nonsense.list-everything: unknown call kind; valid kinds are all, "),
            ({"nonsense": {"all": "gibberish"}},
             "faults.nonsense.all: expected one of truncated-json, html-200, "),
            ({"paging": "sideways"},
             "faults.paging: expected one of normal, repeat-marker, endless, got 'sideways'")]:
        with pytest.raises(faults.FaultError) as e:
            faults.validate(bad)
        assert str(e.value).startswith(message), str(e.value)


def test_nonsense_garbles_the_answers_it_names(cloud, boot):
    boot("first")
    session = cloud.session()
    base = cloud.info()["auth_url"].rsplit("/identity", 1)[0]
    servers = base + "/compute/v2.1/servers/detail"
    images = base + "/image/v2/images"

    def get(url):
        return session.get(url, raise_exc=False)
    assert get(servers).json()["servers"][0]["id"]
    cloud.set_faults({"nonsense": {"list-servers": "truncated-json"}})
    answer = get(servers)
    assert answer.status_code == 200
    with pytest.raises(ValueError):
        answer.json()
    assert get(images).json()["images"], "only the kind named is garbled"
    cloud.set_faults({"nonsense": {"list-servers": "html-200"}})
    answer = get(servers)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.text.startswith("<!DOCTYPE html>")
    expectations = {
        "empty-object": lambda body: body == {},
        "missing-id": lambda body: "id" not in body["servers"][0],
        "missing-name": lambda body: "name" not in body["servers"][0],
        "string-item": lambda body: isinstance(body["servers"][0], str),
        "null-addresses": lambda body: body["servers"][0]["addresses"] is None,
        "bad-metadata": lambda body: isinstance(body["servers"][0]["metadata"], list),
    }
    cloud.set_faults({"nonsense": {"list-servers": None}})   # merged: "all" is left
    for nonsense, check in expectations.items():
        cloud.set_faults({"nonsense": {"all": nonsense}})
        assert check(get(servers).json()), nonsense
    cloud.set_faults({"nonsense": {"all": "missing-id"}})
    assert "id" not in get(images).json()["images"][0]
    cloud.set_faults({"nonsense": {"all": "string-item"}})
    (image_id,) = [i["id"] for i in cloud.images()]
    assert get(images + "/" + image_id).json() == "image"
    # Errors, deletes and keystone are never garbled.
    cloud.set_faults({"nonsense": {"all": "html-200"}})
    assert get(servers + "/../nonexistent").status_code == 404
    assert cloud.session().get(servers, raise_exc=False).status_code == 200   # auth works
    cloud.set_faults({"nonsense": None})
    assert get(servers).json()["servers"][0]["id"]


def test_paging_repeat_marker_and_endless(make_clouds, cloud_config):
    lc = make_clouds({"clouds": [cloud_config(**{"max-page-size": 2})]})
    cloud = lc["local"]
    nova = cloud.nova("2.1")
    (image,) = [i["id"] for i in cloud.images()]
    for i in range(3):
        nova.servers.create("s%d" % i, image, "1")
    session = cloud.session()
    base = cloud.info()["auth_url"].rsplit("/identity", 1)[0]
    servers = base + "/compute/v2.1/servers/detail"
    first = session.get(servers).json()
    marker = first["servers"][-1]["id"]
    assert "marker=%s" % marker in first["servers_links"][0]["href"]
    second = session.get(servers + "?marker=" + marker).json()
    assert len(second["servers"]) == 1 and "servers_links" not in second
    cloud.set_faults({"paging": "repeat-marker"})
    again = session.get(servers + "?marker=" + marker).json()
    assert again["servers"] == first["servers"]          # the marker is ignored
    assert "marker=%s" % marker in again["servers_links"][0]["href"]
    images = session.get(base + "/image/v2/images?marker=" + image).json()
    assert [i["id"] for i in images["images"]] == [image]
    assert images["next"].endswith("marker=" + image)    # glance's next repeats it
    cloud.set_faults({"paging": "endless"})
    seen, marker = set(), None
    for _ in range(4):
        page = session.get(servers + ("?marker=" + marker if marker else "")).json()
        assert len(page["servers"]) == 2 and page["servers_links"]
        marker = page["servers"][-1]["id"]
        assert marker not in seen
        seen.add(marker)
    page = session.get(base + "/image/v2/images?limit=2").json()
    assert len(page["images"]) == 2 and "next" in page
