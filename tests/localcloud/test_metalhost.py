"""MetalHost against real SSH (paramiko): a gate run's leftovers vanish at the
reset, the endpoint goes away and comes back with the same identity.

Every test gets its own random loopback address and pristine tree.
"""

import os
import socket
import threading
import time

import pytest

from localcloud import metalhost
from localcloud.metalhost import MetalHost, MetalHosts
from localcloud.sshhost import NodeHost
from tests.localcloud.test_sshhost import (USER, connect, free_endpoint,
                                           process_gone, run, ssh_keygen,
                                           wait_until)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.filterwarnings(
        "error::pytest.PytestUnhandledThreadExceptionWarning"),
]


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    """(private key path, public key line) of a real OpenSSH key."""
    return ssh_keygen(tmp_path_factory.mktemp("keys"), "ed25519")


@pytest.fixture
def pristine(tmp_path):
    path = tmp_path / "pristine"
    (path / "etc").mkdir(parents=True)
    (path / "etc" / "issue").write_text("Ubuntu 12.04 LTS metal\n")
    (path / "bin").mkdir()
    (path / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (path / "bin" / "tool").chmod(0o755)
    (path / "secret").write_text("s\n")
    (path / "secret").chmod(0o600)
    (path / "issue-link").symlink_to("etc/issue")
    (path / "dangling").symlink_to("no/such/file")
    return path


@pytest.fixture
def make_host(tmp_path, pristine, key):
    """make_host(**overrides) -> a started MetalHost, stopped afterwards."""
    hosts = []

    def make(**overrides):
        address, port = free_endpoint()
        kwargs = dict(name="metal%d" % len(hosts), address=address, port=port,
                      root=str(tmp_path / ("root%d" % len(hosts))),
                      pristine=str(pristine), users={USER: [key[1]]},
                      reset_delay=0.1, down_seconds=0.4)
        kwargs.update(overrides)
        host = MetalHost(**kwargs)
        hosts.append(host)
        host.start()
        return host

    yield make
    for host in hosts:
        host.stop()


def snapshot(path):
    """Everything cp -a preserves that we care about: names, kinds, modes,
    contents, link targets."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if os.path.islink(full):
                what = ("link", os.readlink(full))
            elif os.path.isdir(full):
                what = ("dir", None)
            else:
                with open(full, "rb") as f:
                    what = ("file", f.read())
            result[os.path.relpath(full, path)] = (st.st_mode, what)
    return result


def refused(host):
    try:
        socket.create_connection((host.address, host.port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:     # reset by an endpoint going down (seen under load): not yet
        return False
    return False


def host_threads(host):
    prefixes = ("metalhost-%s" % host.name,
                "sshhost-%s:%s" % (host.address, host.port))
    return [t.name for t in threading.enumerate()
            if t.name.startswith(prefixes)]


def test_reset_command_wipes_the_gate_run_and_keeps_the_identity(
        make_host, key, pristine):
    before = snapshot(pristine)
    host = make_host(down_seconds=0.8)
    assert host.state == "up" and host.resets == 0
    assert snapshot(host.root) == before

    with connect(host, key[0]) as client:
        server_key = client.get_transport().get_remote_server_key()
        assert run(client, "echo left > leftover; mkdir -p work/ro;"
                           " touch work/ro/f; chmod 555 work/ro;"
                           " echo changed > etc/issue; rm bin/tool") == (
            0, b"", b"")
        _, out, _ = client.exec_command("echo $$; exec sleep 1000")
        sleeper = int(out.readline())
        # The reset command returns at once and the session ends normally.
        started = time.monotonic()
        assert run(client, host.reset_command) == (0, b"", b"")
        assert time.monotonic() - started < host.reset_delay + 0.5
    assert os.path.exists(host.root + "/leftover")

    # Down: everything the gate run started died with the endpoint.
    assert wait_until(lambda: refused(host), 3)
    assert host.state == "resetting"
    assert wait_until(lambda: process_gone(sleeper), 2)
    assert wait_until(lambda: host.resets == 1, 3)
    assert refused(host)    # still inside the down window
    assert host.wait_for_state("up", timeout=3)

    # connect() accepts only the host key it was given.
    with connect(host, key[0]) as client:
        assert client.get_transport().get_remote_server_key() == server_key
        assert run(client, "cat etc/issue; ls leftover work 2>&1 | wc -l") == (
            0, b"Ubuntu 12.04 LTS metal\n2\n", b"")
    assert snapshot(host.root) == before
    assert snapshot(pristine) == before
    assert host.resets == 1 and host.state == "up"

    # And once more, programmatically.
    host.down_seconds = 0.1
    assert host.reset()
    assert host.state == "resetting"
    assert not host.reset()     # one at a time
    assert host.wait_for_state("up", timeout=3)
    assert host.resets == 2
    with connect(host, key[0]) as client:
        assert run(client, "true")[0] == 0


def test_reset_variable_names_a_trigger_outside_root(make_host, key):
    host = make_host()
    with connect(host, key[0]) as client:
        status, out, _ = run(client, 'echo "$DG_METALHOST_RESET"; '
                                     'test -e "$DG_METALHOST_RESET"; echo $?',
                             environment={"LANG": "C"})
    path, exists = out.decode().splitlines()
    assert status == 0
    assert path == host.trigger_path
    assert os.path.isabs(path)
    assert not (path + os.sep).startswith(host.root + os.sep)
    assert os.path.isdir(os.path.dirname(path))
    assert exists == "1"
    with pytest.raises(ValueError):
        MetalHost("bad", host.address, host.port, host.root, host.pristine,
                  {}, control_dir=os.path.join(host.root, "ctl"))


def test_never_return_stays_down(make_host):
    host = make_host(reset_delay=0.05, down_seconds=0.2)
    host.never_return = True    # set after start, before the reset
    assert host.reset()
    assert host.wait_for_state("down", timeout=3)
    assert host.resets == 1
    time.sleep(host.down_seconds * 4)
    assert refused(host)
    assert host.state == "down"
    assert not host.reset()
    host.stop()
    assert host.state == "stopped"
    assert wait_until(lambda: not host_threads(host), 2), host_threads(host)


@pytest.mark.parametrize("phase", ["before going down", "in the down window"])
def test_stop_during_reset_leaves_no_threads(make_host, key, phase):
    threads = threading.active_count()
    host = make_host(reset_delay=0.3 if phase == "before going down" else 0.05,
                     down_seconds=0.3)
    client = connect(host, key[0])
    try:
        _, out, _ = client.exec_command("echo $$; exec sleep 1000")
        sleeper = int(out.readline())
        assert host.reset()
        if phase == "in the down window":
            assert wait_until(lambda: host.resets == 1, 3)
        started = time.monotonic()
        host.stop()
        host.stop()
        assert time.monotonic() - started < 2
    finally:
        client.close()
    assert host.state == "stopped"
    assert wait_until(lambda: process_gone(sleeper), 2)
    assert refused(host)
    assert os.path.isdir(host.root)
    assert wait_until(lambda: not host_threads(host), 2), host_threads(host)
    assert wait_until(lambda: threading.active_count() <= threads, 2), \
        [t.name for t in threading.enumerate()]
    time.sleep(0.4)     # the abandoned reset must not bring the host back
    assert refused(host) and host.state == "stopped"


def test_busy_port_is_retried_then_given_up(make_host, key, monkeypatch):
    # The squatter must get the port inside the down window, hence a long one.
    host = make_host(reset_delay=0.05, down_seconds=0.6)
    for hold, outcome in ((1.0, "up"), (None, "down")):
        if outcome == "down":
            monkeypatch.setattr(metalhost, "BIND_RETRY_SECONDS", 0.3)
        assert host.reset()
        assert wait_until(lambda: refused(host), 3)
        with socket.socket() as squatter:
            # SO_REUSEADDR: the closed node's connections may be in TIME_WAIT.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((host.address, host.port))
            squatter.listen()
            if hold is not None:
                time.sleep(hold)    # past down_seconds: the host retries
                assert host.state == "resetting"
                squatter.close()
            assert host.wait_for_state("up", "down", timeout=4)
            assert host.state == outcome
        if outcome == "up":
            with connect(host, key[0]) as client:
                assert run(client, "true")[0] == 0


def test_metal_hosts_start_and_stop_together(tmp_path, pristine, key):
    _, port = free_endpoint()
    specs = [dict(name="m%d" % i, address=free_endpoint()[0], port=port,
                  root=str(tmp_path / ("m%d" % i))) for i in range(3)]
    with MetalHosts(specs, pristine=str(pristine), users={USER: [key[1]]},
                    reset_delay=0.05, down_seconds=0.05) as hosts:
        assert len(hosts) == 3
        assert [h.state for h in hosts] == ["up"] * 3
        with connect(hosts["m1"], key[0]) as client:
            assert run(client, "cat etc/issue")[1] == b"Ubuntu 12.04 LTS metal\n"
    assert [h.state for h in hosts] == ["stopped"] * 3
    assert all(not host_threads(h) for h in hosts)


def test_nodehost_environment_reaches_commands(tmp_path, key):
    address, port = free_endpoint()
    with NodeHost(address, port, str(tmp_path), {USER: [key[1]]},
                  environment={"FOO": "bar baz", "LANG": "C"}) as node, \
            connect(node, key[0]) as client:
        assert run(client, 'echo "$FOO"; echo "$LANG"') == (
            0, b"bar baz\nC\n", b"")
        # The client's accepted LANG still wins.
        assert run(client, 'echo "$FOO $LANG"',
                   environment={"LANG": "en_US.UTF-8"}) == (
            0, b"bar baz en_US.UTF-8\n", b"")
