"""100 servers booted, used and deleted through novaclient, then the cloud
torn down: no threads, child processes, listening ports or directories may
be left behind."""

import os
import threading
import time

from localcloud.testing import (child_processes, listening_sockets,
                                local_clouds, ssh_connect)

COUNT = 100


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)


def test_hundred_servers_leave_nothing_behind(tmp_path, cloud_config,
                                             ssh_key):
    threads_before = set(threading.enumerate())
    children_before = set(child_processes())
    config = {"clouds": [cloud_config(
        "scale", faults={"boot-delay": {"min": 0.0, "max": 0.3}})]}
    with local_clouds(config, tmp_dir=str(tmp_path)) as lc:
        cloud = lc["scale"]
        info = cloud.info()
        nova = cloud.nova("2.1")
        nova.keypairs.create("k", public_key=ssh_key.public)
        (image,) = cloud.glance().images.list()
        ids = [nova.servers.create("node-%03d" % i, image.id, "1",
                                   key_name="k").id for i in range(COUNT)]

        def all_active():
            servers = nova.servers.list(search_opts={"status": "ACTIVE"})
            return len(servers) == COUNT
        _wait_for(all_active, 60, "100 ACTIVE servers")
        servers = nova.servers.list()
        addresses = {s.networks["private"][0] for s in servers}
        assert len(addresses) == COUNT
        listening = listening_sockets()
        assert all((a, 2222) in listening for a in addresses)
        roots = [s["root"] for s in cloud.servers()]
        assert all(os.path.isdir(r) for r in roots)

        # leave long-running commands behind on a few nodes
        clients = []
        for address in sorted(addresses)[:3]:
            client = ssh_connect(address, 2222, ssh_key.key)
            client.exec_command("sleep 300")
            clients.append(client)
        _wait_for(lambda: len(set(child_processes()) - children_before) >= 3,
                  5, "the sleep commands to start")

        for server_id in ids:
            nova.servers.delete(server_id)
        assert nova.servers.list() == []
        assert not any(os.path.exists(r) for r in roots)
        assert not (listening_sockets() &
                    {(a, 2222) for a in addresses})
        assert set(child_processes()) <= children_before
        for client in clients:
            client.close()
        state_dir = lc.local.state_dir
        api_port, admin_port = info["api_port"], \
            int(lc.admin_url.rsplit(":", 1)[1])
    # torn down
    assert not os.path.exists(state_dir)
    assert not os.path.exists(lc.work_dir)
    listening = listening_sockets()
    assert ("127.0.0.1", api_port) not in listening
    assert ("127.0.0.1", admin_port) not in listening
    assert not any(addr in addresses for addr, _ in listening)
    assert set(child_processes()) <= children_before
    _wait_for(lambda: set(threading.enumerate()) <= threads_before, 5,
              "threads to finish: %s" % (set(threading.enumerate())
                                         - threads_before))
