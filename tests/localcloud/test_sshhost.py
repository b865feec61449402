"""NodeHost against real clients: paramiko, the OpenSSH ssh binary and rsync.

Every test gets its own random loopback address (127.x.y.z) and root directory.
"""

import gc
import os
import random
import socket
import subprocess
import threading
import time

import paramiko
import pytest

from localcloud.sshhost import NodeHost

USER = "jenkins"

pytestmark = [
    pytest.mark.timeout(60),
    # An exception escaping a server thread is a bug even if the client
    # happened not to notice.
    pytest.mark.filterwarnings(
        "error::pytest.PytestUnhandledThreadExceptionWarning"),
]


def free_endpoint():
    """A random loopback address and a port the kernel says is free on it."""
    addr = "127.%d.%d.%d" % (random.randint(1, 254), random.randint(0, 255),
                             random.randint(2, 254))
    with socket.socket() as s:
        s.bind((addr, 0))
        return addr, s.getsockname()[1]


def ssh_keygen(directory, keytype):
    path = str(directory / ("id_" + keytype))
    subprocess.run(["ssh-keygen", "-q", "-t", keytype, "-N", "", "-C",
                    "test@" + keytype, "-f", path], check=True)
    with open(path + ".pub") as f:
        return path, f.read().strip()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """Real OpenSSH key files: {type: (private key path, public key line)}."""
    directory = tmp_path_factory.mktemp("keys")
    return {t: ssh_keygen(directory, t) for t in ("ed25519", "rsa", "ecdsa")}


@pytest.fixture
def root(tmp_path):
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def node(root, keys):
    addr, port = free_endpoint()
    host = NodeHost(addr, port, str(root),
                    {USER: [line for _, line in keys.values()]})
    host.start()
    yield host
    host.stop()


def connect(node, key_path, username=USER, **kwargs):
    client = paramiko.SSHClient()
    client.get_host_keys().add("[%s]:%d" % (node.address, node.port),
                               node.host_key.get_name(), node.host_key)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    kwargs.setdefault("key_filename", key_path)
    kwargs.setdefault("banner_timeout", 5)
    client.connect(node.address, node.port, username=username,
                   look_for_keys=False, allow_agent=False, timeout=5,
                   auth_timeout=5, **kwargs)
    # paramiko leaves Nagle on: back-to-back commands would wait ~40 ms each
    # for a delayed ACK.
    client.get_transport().sock.setsockopt(socket.IPPROTO_TCP,
                                           socket.TCP_NODELAY, 1)
    return client


def run(client, command, stdin_data=None, environment=None):
    stdin, stdout, stderr = client.exec_command(command, timeout=10,
                                                environment=environment)
    if stdin_data is not None:
        stdin.write(stdin_data)
    stdin.channel.shutdown_write()
    out, err = stdout.read(), stderr.read()
    return stdout.channel.recv_exit_status(), out, err


def ssh_options(node, key_path, known_hosts):
    return ["-F", "/dev/null", "-p", str(node.port), "-i", key_path,
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "UserKnownHostsFile=" + str(known_hosts),
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5"]


def write_known_hosts(path, node, key_line):
    path.write_text("[%s]:%d %s\n" % (node.address, node.port, key_line))
    return path


def process_gone(pid):
    """True when pid no longer runs and is not a zombie waiting on us."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    state, ppid = fields[0], int(fields[1])
    return state == "Z" and ppid != os.getpid()


def our_children():
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                children.append(int(entry))
    return children


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- authentication -----------------------------------------------------------

@pytest.mark.parametrize("keytype", ["ed25519", "rsa", "ecdsa"])
def test_key_login_runs_command_as_user(node, keys, keytype):
    with connect(node, keys[keytype][0]) as client:
        assert run(client, "echo $USER $LOGNAME") == (0, b"jenkins jenkins\n",
                                                       b"")


def test_wrong_key_is_refused(node):
    with pytest.raises(paramiko.AuthenticationException):
        connect(node, None, key_filename=None,
                pkey=paramiko.ECDSAKey.generate(bits=256))


def test_unknown_user_is_refused(node, keys):
    with pytest.raises(paramiko.AuthenticationException):
        connect(node, keys["ed25519"][0], username="root")


def test_password_and_none_auth_are_refused(node):
    with pytest.raises(paramiko.BadAuthenticationType) as exc:
        connect(node, None, key_filename=None, password="secret")
    assert exc.value.allowed_types == ["publickey"]
    with paramiko.Transport((node.address, node.port)) as transport:
        transport.start_client(timeout=5)
        with pytest.raises(paramiko.BadAuthenticationType):
            transport.auth_none(USER)
        assert not transport.is_authenticated()


# -- exec ---------------------------------------------------------------------

def test_exit_status_and_separate_streams(node, keys):
    with connect(node, keys["ed25519"][0]) as client:
        assert run(client, "echo out; echo err >&2; exit 3") == (
            3, b"out\n", b"err\n")
        # bash itself killed by a signal: reported as 128 + n
        assert run(client, "kill -TERM $$")[0] == 128 + 15


def test_instant_commands_get_their_reply_before_close(node, keys):
    """A command may finish before paramiko has answered the exec request;
    its output and close must still come after that answer."""
    with connect(node, keys["ed25519"][0]) as client:
        for n in range(60):
            assert run(client, "echo %d; exit %d" % (n, n % 7)) == (
                n % 7, b"%d\n" % n, b"")


def test_stdin_is_piped_to_command_in_root(node, keys, root):
    data = os.urandom(1 << 20) + b"\x00\xff end"
    with connect(node, keys["ed25519"][0]) as client:
        assert run(client, "cat > f && wc -c < f", stdin_data=data) == (
            0, b"%d\n" % len(data), b"")
    assert (root / "f").read_bytes() == data


def test_cwd_home_and_environment(node, keys, root):
    with connect(node, keys["ed25519"][0]) as client:
        status, out, _ = run(
            client, 'pwd; echo "$HOME"; echo "$LANG"; echo "${EVIL:-unset}"',
            environment={"LANG": "en_US.UTF-8", "EVIL": "x"})
    assert status == 0
    assert out.decode().splitlines() == [str(root), str(root), "en_US.UTF-8",
                                         "unset"]


# -- real tools ---------------------------------------------------------------

def make_tree(path):
    (path / "dir with spaces").mkdir(parents=True)
    (path / "dir with spaces" / "file name with spaces.txt").write_text("hi\n")
    (path / "blob.bin").write_bytes(os.urandom(200000))
    (path / "empty").mkdir()


def tree(path):
    return sorted((str(p.relative_to(path)),
                   p.read_bytes() if p.is_file() else None)
                  for p in path.rglob("*"))


def test_rsync_push_and_pull(node, keys, root, tmp_path):
    known_hosts = write_known_hosts(tmp_path / "known_hosts", node,
                                    node.host_key_line)
    rsh = " ".join(["ssh"] + ssh_options(node, keys["ed25519"][0],
                                         known_hosts))
    src, pulled = tmp_path / "src", tmp_path / "pulled"
    make_tree(src)
    remote = "%s@%s:" % (USER, node.address)

    push = subprocess.run(["rsync", "-a", "-e", rsh, str(src) + "/",
                           remote + "dest/"], capture_output=True, timeout=30)
    assert push.returncode == 0, push.stderr
    assert tree(root / "dest") == tree(src)

    pull = subprocess.run(["rsync", "-a", "-e", rsh, remote + "dest/",
                           str(pulled) + "/"], capture_output=True, timeout=30)
    assert pull.returncode == 0, pull.stderr
    assert tree(pulled) == tree(src)


def test_openssh_client_round_trip(node, keys, root, tmp_path):
    known_hosts = write_known_hosts(tmp_path / "known_hosts", node,
                                    node.host_key_line)
    result = subprocess.run(
        ["ssh"] + ssh_options(node, keys["ed25519"][0], known_hosts)
        + ["%s@%s" % (USER, node.address),
           "cat > got; cat got; echo e >&2; exit 7"],
        input=b"payload\n", capture_output=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (
        7, b"payload\n", b"e\n")
    assert (root / "got").read_bytes() == b"payload\n"


def test_openssh_client_rejects_wrong_host_key(node, keys, root, tmp_path):
    other = paramiko.ECDSAKey.generate(bits=256)
    known_hosts = write_known_hosts(
        tmp_path / "known_hosts", node,
        "%s %s" % (other.get_name(), other.get_base64()))
    result = subprocess.run(
        ["ssh"] + ssh_options(node, keys["ed25519"][0], known_hosts)
        + ["%s@%s" % (USER, node.address), "touch ran"],
        capture_output=True, timeout=30)
    assert result.returncode == 255
    assert b"Host key verification failed" in result.stderr
    assert not (root / "ran").exists()


# -- SFTP ---------------------------------------------------------------------

def test_sftp_put_get_and_friends(node, keys, root, tmp_path):
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(100000))
    with connect(node, keys["ed25519"][0]) as client:
        with client.open_sftp() as sftp:
            assert sftp.normalize(".") == str(root)
            sftp.mkdir("sub")
            sftp.put(str(local), "sub/up.bin")
            assert (root / "sub" / "up.bin").read_bytes() == local.read_bytes()
            assert sftp.stat("sub/up.bin").st_size == 100000
            assert sftp.listdir("sub") == ["up.bin"]
            sftp.rename("sub/up.bin", "sub/moved.bin")
            sftp.get("sub/moved.bin", str(tmp_path / "back.bin"))
            assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
            sftp.remove("sub/moved.bin")
            with pytest.raises(FileNotFoundError):
                sftp.stat("sub/moved.bin")
    assert list((root / "sub").iterdir()) == []


# -- faults and lifecycle -----------------------------------------------------

def test_unreachable_node_accepts_tcp_but_never_sends_banner(root, keys):
    addr, port = free_endpoint()
    with NodeHost(addr, port, str(root), {USER: [keys["ed25519"][1]]},
                  reachable=False) as host:
        with socket.create_connection((addr, port), timeout=5) as sock:
            sock.settimeout(0.5)
            with pytest.raises(socket.timeout):
                sock.recv(100)
        started = time.monotonic()
        with pytest.raises(paramiko.SSHException, match="banner"):
            connect(host, keys["ed25519"][0], banner_timeout=1)
        assert time.monotonic() - started < 4


def test_stop_kills_running_commands_and_refuses_connections(node, keys):
    client = connect(node, keys["ed25519"][0])
    try:
        _, leader_out, _ = client.exec_command("echo $$; exec sleep 1000")
        _, child_out, _ = client.exec_command("sleep 1000 & echo $!; wait")
        leader = int(leader_out.readline())
        child = int(child_out.readline())
        assert not process_gone(leader) and not process_gone(child)

        started = time.monotonic()
        node.stop()
        assert time.monotonic() - started < 2
        assert process_gone(leader)
        assert wait_until(lambda: process_gone(child), 2)
        node.stop()     # idempotent
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((node.address, node.port), timeout=2)
    finally:
        client.close()


def test_client_disconnect_mid_command_leaves_no_zombie(node, keys):
    client = connect(node, keys["ed25519"][0])
    _, out, _ = client.exec_command("echo $$; exec sleep 1000")
    pid = int(out.readline())
    client.close()
    assert wait_until(lambda: process_gone(pid), 3)
    with connect(node, keys["ed25519"][0]) as client:
        assert run(client, "echo still serving")[0] == 0


def test_command_timeout_kills_the_command(root, keys):
    addr, port = free_endpoint()
    with NodeHost(addr, port, str(root), {USER: [keys["ed25519"][1]]},
                  command_timeout=0.5) as host, \
            connect(host, keys["ed25519"][0]) as client:
        started = time.monotonic()
        assert run(client, "echo started; sleep 100") == (
            128 + 9, b"started\n", b"")
        assert time.monotonic() - started < 3


def test_login_grace_time_closes_idle_connections(root, keys):
    addr, port = free_endpoint()
    with NodeHost(addr, port, str(root), {USER: [keys["ed25519"][1]]},
                  login_grace_time=0.5) as host:
        with socket.create_connection((addr, port), timeout=5) as sock:
            assert sock.recv(100).startswith(b"SSH-2.0-")
            started = time.monotonic()
            while sock.recv(100):   # until the server hangs up
                pass
            assert time.monotonic() - started < 3
        with connect(host, keys["ed25519"][0]) as client:
            assert run(client, "true")[0] == 0


def test_max_sessions_refuses_extra_commands(root, keys):
    addr, port = free_endpoint()
    with NodeHost(addr, port, str(root), {USER: [keys["ed25519"][1]]},
                  max_sessions=1) as host, \
            connect(host, keys["ed25519"][0]) as client:
        _, first, _ = client.exec_command("echo one; sleep 1000")
        assert first.readline() == "one\n"
        with pytest.raises(paramiko.SSHException):
            client.exec_command("echo two")
        first.channel.close()
        assert wait_until(lambda: run(client, "true")[0] == 0, 3)


def test_start_raises_when_address_is_taken(node, root):
    clash = NodeHost(node.address, node.port, str(root), {})
    with pytest.raises(OSError):
        clash.start()
    clash.stop()


def test_hundred_hosts_leave_no_threads_fds_or_children(root, keys):
    gc.collect()
    threads = threading.active_count()
    fds = len(os.listdir("/proc/self/fd"))
    children = our_children()

    _, port = free_endpoint()
    addresses = set()
    while len(addresses) < 100:
        addresses.add(free_endpoint()[0])
    hosts = [NodeHost(a, port, str(root), {USER: [keys["ed25519"][1]]})
             for a in sorted(addresses)]
    clients = []
    try:
        for host in hosts:
            host.start()
        # Some traffic: finished commands, running ones, an SFTP session.
        for host in hosts[:5]:
            client = connect(host, keys["ed25519"][0])
            clients.append(client)
            assert run(client, "echo hi")[0] == 0
            client.exec_command("sleep 1000")
        clients[0].open_sftp().listdir(".")
        assert threading.active_count() > threads + 100
    finally:
        started = time.monotonic()
        for host in hosts:
            host.stop()
        stop_time = time.monotonic() - started
        for client in clients:
            client.close()
    assert stop_time < 10
    assert wait_until(lambda: threading.active_count() == threads, 3), \
        [t.name for t in threading.enumerate()]
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert wait_until(lambda: our_children() == children, 2)
