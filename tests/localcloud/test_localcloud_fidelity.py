"""Where the local cloud must answer as nova, glance and a stock image's sshd
do, for openstacksdk and Nodepool (issue 17): availability zones, the
nova-network floating IP proxies, flavor swap and /limits by microversion,
glance image hashes, and one host key of each type per node.

Shapes are checked against nova's published api samples
(doc/api_samples/os-availability-zone/availability-zone-detail-resp.json,
os-floating-ip-pools/floatingippools-list-resp.json,
os-floating-ips/floating-ips-list-resp.json, flavors/v2.75/*,
limits/v2.36/limit-get-resp.json) and the microversion history (2.36: the
proxy APIs answer 404; 2.39: no maxImageMeta; 2.57: no maxPersonality*;
2.75: swap 0).
"""

import hashlib
import os
import socket
import stat
import subprocess
import time

import paramiko
import pytest
from keystoneauth1 import adapter

from localcloud.metalhost import MetalHost
from localcloud.sshhost import NodeHost
from localcloud.testing import wait_for_image
from tests.localcloud.test_sshhost import USER, free_endpoint

pytestmark = pytest.mark.timeout(60)

#: limits/v2.36/limit-get-resp.json, absolute keys.
LIMITS_2_36 = {"maxImageMeta", "maxPersonality", "maxPersonalitySize",
               "maxServerMeta", "maxTotalCores", "maxTotalInstances",
               "maxTotalKeypairs", "maxTotalRAMSize", "maxServerGroups",
               "maxServerGroupMembers", "totalCoresUsed",
               "totalInstancesUsed", "totalRAMUsed", "totalServerGroupsUsed"}
KEY_TYPES = {"ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"}


def compute(cloud):
    """A keystoneauth Adapter on the compute endpoint, the way openstacksdk's
    compute proxy makes its raw calls; errors are returned, not raised."""
    return adapter.Adapter(cloud.session(), service_type="compute",
                           interface="public", region_name=cloud.region_name,
                           raise_exc=False)


# -- nova -------------------------------------------------------------------------


def test_availability_zones_list_and_detail(cloud, boot):
    server = boot("zoned")
    api = compute(cloud)
    for version in (None, "2.1", "2.96"):
        resp = api.get("/os-availability-zone", microversion=version)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"availabilityZoneInfo": [
            {"zoneName": "nova", "zoneState": {"available": True},
             "hosts": None}]}
    detail = api.get("/os-availability-zone/detail").json()
    zones = {z["zoneName"]: z for z in detail["availabilityZoneInfo"]}
    assert list(zones) == ["internal", "nova"]
    assert all(z["zoneState"] == {"available": True} for z in zones.values())
    (host,) = zones["nova"]["hosts"]
    assert set(zones["nova"]["hosts"][host]) == {"nova-compute"}
    assert set(zones["internal"]["hosts"][host]) == {"nova-conductor",
                                                     "nova-scheduler"}
    service = zones["nova"]["hosts"][host]["nova-compute"]
    assert service["available"] is True and service["active"] is True
    assert time.strptime(service["updated_at"], "%Y-%m-%dT%H:%M:%S.%f")
    # The servers are on that host: nova's hostId is sha224(project + host).
    shown = cloud.nova("2.1").servers.get(server.id)
    assert getattr(shown, "OS-EXT-AZ:availability_zone") == "nova"
    assert shown.hostId == hashlib.sha224(
        (shown.tenant_id + host).encode()).hexdigest()
    # novaclient's own manager reads the same documents.
    assert [z.zoneName for z in cloud.nova("2.1").availability_zones.list(
        detailed=False)] == ["nova"]
    assert [z.zoneName for z in cloud.nova("2.96").availability_zones.list()
            ] == ["internal", "nova"]


def test_floating_ip_proxies_answer_below_2_36_only(cloud):
    api = compute(cloud)
    for version in (None, "2.1", "2.35"):
        pools = api.get("/os-floating-ip-pools", microversion=version)
        assert pools.status_code == 200, pools.text
        assert pools.json() == {"floating_ip_pools": [{"name": "public"}]}
        ips = api.get("/os-floating-ips", microversion=version)
        assert ips.status_code == 200, ips.text
        assert ips.json() == {"floating_ips": []}
        missing = api.get("/os-floating-ips/1", microversion=version)
        assert missing.status_code == 404
        assert missing.json() == {"itemNotFound": {
            "code": 404, "message": "Floating IP not found for ID 1"}}
    for version in ("2.36", "2.96"):
        for path in ("/os-floating-ip-pools", "/os-floating-ips",
                     "/os-floating-ips/1"):
            resp = api.get(path, microversion=version)
            assert resp.status_code == 404, (path, version)
            assert resp.json() == {"itemNotFound": {
                "code": 404, "message": "The resource could not be found."}}
            assert resp.headers["OpenStack-API-Version"] == \
                "compute %s" % version
    assert cloud.calls("GET /compute/v2.1/os-floating-ip-pools") == 5


def test_flavor_swap_is_an_empty_string_before_2_75_and_0_from_it(cloud):
    for version, swap in (("2.1", ""), ("2.74", ""), ("2.75", 0),
                          ("2.96", 0)):
        nova = cloud.nova(version)
        assert {f.swap for f in nova.flavors.list()} == {swap}, version
        assert nova.flavors.get("1").swap == swap
        _, body = nova.client.get("/flavors/detail")
        assert {f["swap"] for f in body["flavors"]} == {swap}
        _, body = nova.client.get("/flavors")    # the list has no swap
        assert all("swap" not in f for f in body["flavors"])


def test_limits_keys_follow_the_microversion(cloud):
    def keys(version):
        return {limit.name for limit in
                cloud.nova(version).limits.get().absolute}

    assert keys("2.36") == LIMITS_2_36
    assert keys("2.38") == LIMITS_2_36
    assert keys("2.39") == LIMITS_2_36 - {"maxImageMeta"}
    assert keys("2.56") == LIMITS_2_36 - {"maxImageMeta"}
    assert keys("2.57") == LIMITS_2_36 - {
        "maxImageMeta", "maxPersonality", "maxPersonalitySize"}
    older = keys("2.35")
    assert "maxImageMeta" in older and "maxSecurityGroups" in older


# -- glance -----------------------------------------------------------------------


def canonical_stream(path):
    """The bytes localcloud.glance.store_digests documents for a directory
    store, written out independently of it."""
    base = os.fsencode(path)
    entries = []
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            entries.append(os.path.relpath(os.path.join(dirpath, name), base))
    out = b""
    for rel in sorted(entries):
        full = os.path.join(base, rel)
        st = os.lstat(full)
        mode = b"%04o" % stat.S_IMODE(st.st_mode)
        if os.path.islink(full):
            out += b"l %s %s\0%s\0" % (mode, rel, os.readlink(full))
        elif os.path.isdir(full):
            out += b"d %s %s\0" % (mode, rel)
        else:
            with open(full, "rb") as f:
                data = f.read()
            out += b"f %s %s\0%d\0%s" % (mode, rel, len(data), data)
    return out


def test_active_images_carry_md5_and_sha512_of_their_store(cloud, boot,
                                                           ssh_key):
    glance = cloud.glance()
    nova = cloud.nova("2.45")
    server = boot("hashed")
    (record,) = [s for s in cloud.servers() if s["id"] == server.id]
    root = record["root"]
    os.makedirs(os.path.join(root, "opt", "cache"))
    with open(os.path.join(root, "opt", "cache", "blob"), "wb") as f:
        f.write(os.urandom(70000))
    os.chmod(os.path.join(root, "opt", "cache", "blob"), 0o640)
    os.symlink("cache/blob", os.path.join(root, "opt", "link"))

    first = nova.servers.create_image(server.id, "first")
    assert wait_for_image(glance, first).status == "active"
    os.utime(os.path.join(root, "opt", "cache", "blob"), (1, 1))
    second = nova.servers.create_image(server.id, "second")  # only times
    assert wait_for_image(glance, second).status == "active"
    with open(os.path.join(root, "etc", "issue"), "a") as f:
        f.write("changed\n")
    third = nova.servers.create_image(server.id, "third")
    assert wait_for_image(glance, third).status == "active"

    stores = {i["id"]: i["store"] for i in cloud.images()}
    shown = {}
    for image_id in (first, second, third):
        image = glance.images.get(image_id)
        stream = canonical_stream(stores[image_id])
        assert image.os_hash_algo == "sha512"
        assert image.os_hash_value == hashlib.sha512(stream).hexdigest()
        assert image.checksum == hashlib.md5(stream).hexdigest()
        shown[image_id] = (image.checksum, image.os_hash_value)
    assert shown[first] == shown[second]        # same content, same hashes
    assert shown[third][0] != shown[first][0]
    assert shown[third][1] != shown[first][1]
    listed = {i.id: (i.checksum, i.os_hash_value) for i in glance.images.list()}
    assert {k: listed[k] for k in shown} == shown

    base = next(i for i in glance.images.list()
                if i.id not in shown)           # the seeded base image
    stream = canonical_stream(stores[base.id])
    assert (base.checksum, base.os_hash_algo, base.os_hash_value) == (
        hashlib.md5(stream).hexdigest(), "sha512",
        hashlib.sha512(stream).hexdigest())


def test_images_not_active_have_no_hash(cloud, boot):
    cloud.set_faults({"snapshot-delay": 30})
    server = boot("slow-snapshot")
    image_id = cloud.nova("2.45").servers.create_image(server.id, "pending")
    image = cloud.glance().images.get(image_id)
    assert image.status in ("queued", "saving")
    assert (image.checksum, image.os_hash_algo, image.os_hash_value) == (
        None, None, None)


# -- host keys ----------------------------------------------------------------------


def keyscan(address, port):
    """{type: "type base64"} from OpenSSH's ssh-keyscan, asking for each."""
    result = subprocess.run(
        ["ssh-keyscan", "-p", str(port), "-T", "10", "-t", "rsa,ecdsa,ed25519",
         address], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    keys = {}
    for line in result.stdout.splitlines():
        if line and not line.startswith("#"):
            _, kind, body = line.split()
            keys[kind] = "%s %s" % (kind, body)
    return keys


def paramiko_scan(address, port):
    """{type: line} the way Nodepool's nodescan gathers host keys: one
    transport per host key algorithm paramiko knows, asking for that one."""
    keys = {}
    algorithms, index = None, 0
    while algorithms is None or index < len(algorithms):
        sock = socket.create_connection((address, port), timeout=10)
        transport = paramiko.Transport(sock)
        options = transport.get_security_options()
        if algorithms is None:
            algorithms = list(options.key_types)
        options.key_types = [algorithms[index]]
        index += 1
        try:
            transport.start_client(timeout=10)
            key = transport.get_remote_server_key()
            keys.setdefault(key.get_name(), set()).add(
                "%s %s" % (key.get_name(), key.get_base64()))
        except paramiko.SSHException as e:
            assert "no acceptable host key" in str(e), e
        finally:
            transport.close()
            sock.close()
    assert all(len(lines) == 1 for lines in keys.values()), keys
    return {kind: lines.pop() for kind, lines in keys.items()}


def test_each_node_offers_its_own_ecdsa_ed25519_and_rsa_keys(cloud, boot):
    nodes = [boot("keys-1"), boot("keys-2")]
    seen = []
    for server in nodes:
        (record,) = [s for s in cloud.servers() if s["id"] == server.id]
        address = server.networks["private"][0]
        scanned = keyscan(address, record["ssh_port"])
        assert set(scanned) == KEY_TYPES
        # the primary key is the one the cloud reports and the console shows
        assert scanned["ecdsa-sha2-nistp256"] == record["host_key"]
        output = cloud.nova("2.1").servers.get_console_output(server.id)
        assert record["host_key"] in output.splitlines()
        assert paramiko_scan(address, record["ssh_port"]) == scanned
        seen.extend(scanned.values())
    assert len(set(seen)) == 6      # no key is shared between nodes


@pytest.fixture
def node_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    return str(root)


def test_node_host_keys_primary_first_and_kept_across_a_restart(node_root):
    address, port = free_endpoint()
    node = NodeHost(address, port, node_root, {USER: []})
    assert node.host_key.get_name() == "ecdsa-sha2-nistp256"
    lazy = {k.get_name() for k in node._identity.keys()}
    assert lazy == {"ssh-ed25519"}          # RSA not made yet
    with node:
        first = paramiko_scan(address, port)
    assert set(first) == KEY_TYPES and first["ecdsa-sha2-nistp256"] == \
        node.host_key_line
    assert [k.get_name() for k in node.host_keys] == [
        "ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa"]
    assert node.host_key_lines[0] == node.host_key_line
    assert sorted(node.host_key_lines) == sorted(first.values())

    # A reboot passes the primary key on (as the cloud and MetalHost do) ...
    with NodeHost(address, port, node_root, {USER: []},
                  host_key=node.host_key) as again:
        assert paramiko_scan(address, port) == first
        assert again.host_key_line == node.host_key_line
    # ... or all of them.
    with NodeHost(address, port, node_root, {USER: []},
                  host_key=node.host_keys):
        assert keyscan(address, port) == first
    # A list is exactly the keys to offer.
    with NodeHost(address, port, node_root, {USER: []},
                  host_key=[node.host_key]):
        assert paramiko_scan(address, port) == {
            "ecdsa-sha2-nistp256": node.host_key_line}
    with pytest.raises(ValueError):
        NodeHost(address, port, node_root, {USER: []},
                 host_key=[node.host_key, paramiko.ECDSAKey.generate()])


def test_rsa_key_is_made_once_when_first_asked_for(node_root):
    address, port = free_endpoint()
    with NodeHost(address, port, node_root, {USER: []}) as node:
        assert "ssh-rsa" not in {k.get_name() for k in node._identity.keys()}
        one = keyscan(address, port)["ssh-rsa"]
        assert "ssh-rsa" in {k.get_name() for k in node._identity.keys()}
        assert keyscan(address, port)["ssh-rsa"] == one
        assert one in node.host_key_lines


def test_pinned_primary_key_still_connects(node_root, tmp_path):
    """Clients that pinned the primary key before there were more keys
    (devstack-gate's ssh.connect, known_hosts) still get that key."""
    address, port = free_endpoint()
    private = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(private)], check=True)
    public = (tmp_path / "id_ed25519.pub").read_text().strip()
    with NodeHost(address, port, node_root, {USER: [public]}) as node:
        client = paramiko.SSHClient()
        client.get_host_keys().add("[%s]:%d" % (address, port),
                                   node.host_key.get_name(), node.host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(address, port, username=USER,
                       key_filename=str(private), look_for_keys=False,
                       allow_agent=False, timeout=5, banner_timeout=5)
        try:
            seen = client.get_transport().get_remote_server_key()
            assert "%s %s" % (seen.get_name(), seen.get_base64()) == \
                node.host_key_line
        finally:
            client.close()
        known = tmp_path / "known_hosts"
        known.write_text("[%s]:%d %s\n" % (address, port, node.host_key_line))
        result = subprocess.run(
            ["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(private),
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
             "-o", "StrictHostKeyChecking=yes",
             "-o", "UserKnownHostsFile=%s" % known,
             "%s@%s" % (USER, address), "echo pinned"],
            capture_output=True, timeout=30)
        assert (result.returncode, result.stdout) == (0, b"pinned\n"), \
            result.stderr


def test_metal_host_keeps_all_its_keys_across_a_reset(tmp_path):
    pristine = tmp_path / "pristine"
    (pristine / "etc").mkdir(parents=True)
    address, port = free_endpoint()
    with MetalHost("metal", address, port, str(tmp_path / "root"),
                   str(pristine), {USER: []}, reset_delay=0.05,
                   down_seconds=0.1) as host:
        before = paramiko_scan(address, port)
        assert set(before) == KEY_TYPES
        assert before["ecdsa-sha2-nistp256"] == host.host_key_line
        assert host.reset()
        assert host.wait_for_state("up", timeout=10) and host.resets == 1
        assert paramiko_scan(address, port) == before


def test_flavor_extra_specs_are_empty_and_unknown_flavors_404(cloud):
    """openstacksdk's get_flavor asks for them."""
    api = compute(cloud)
    flavor = api.get("/flavors").json()["flavors"][0]["id"]
    ok = api.get("/flavors/%s/os-extra_specs" % flavor)
    assert ok.status_code == 200 and ok.json() == {"extra_specs": {}}
    assert api.get("/flavors/nope/os-extra_specs").status_code == 404
