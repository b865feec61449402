"""Waiting for a node's SSH: the banner peeked at on the connection that logs in, and
logins that hold a slot only once the node answers (ssh.answering, wait_for_ssh(logins=...))."""

import socket
import threading
import time

import paramiko
import pytest

from devstackgate import ssh
from localcloud.sshhost import NodeHost
from tests.localcloud.test_sshhost import free_endpoint

USER = 'jenkins'


@pytest.fixture(scope='module')
def pkey():
    return paramiko.ECDSAKey.generate()


def node_for(tmp_path, pkey, **kwargs):
    addr, port = free_endpoint()
    root = tmp_path / ('root-%d' % port)
    root.mkdir()
    host = NodeHost(addr, port, str(root), {USER: [ssh.public_line(pkey)]}, **kwargs)
    host.start()
    return host


def banner(ip, port, timeout):
    """Whether ssh.answering() gives a connection (closed again) within `timeout` s."""
    try:
        ssh.answering(ip, port, timeout).close()
    except OSError:
        return False
    return True


class CountingSlots:
    """A semaphore of one that counts how often it was taken."""

    def __init__(self):
        self.lock = threading.BoundedSemaphore(1)
        self.taken = 0

    def __enter__(self):
        self.lock.acquire()
        self.taken += 1

    def __exit__(self, *exc):
        self.lock.release()


def test_banner_is_true_only_for_an_ssh_server(tmp_path, pkey):
    live = node_for(tmp_path, pkey)
    mute = node_for(tmp_path, pkey, reachable=False)     # accepts, never says SSH-
    try:
        assert banner(live.address, live.port, 2)
        started = time.monotonic()
        assert not banner(mute.address, mute.port, 0.5)
        assert time.monotonic() - started < 3
        addr, port = free_endpoint()
        assert not banner(addr, port, 0.5)      # refused
    finally:
        live.stop()
        mute.stop()


def test_banner_is_false_for_a_server_that_is_not_ssh():
    server = socket.socket()
    server.bind(('127.0.0.1', 0))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        conn.sendall(b'HTTP/1.0 400 Bad Request\r\n\r\n')
        conn.close()
    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        assert not banner('127.0.0.1', server.getsockname()[1], 2)
    finally:
        t.join(5)
        server.close()


def test_a_node_that_does_not_answer_holds_no_login_slot(tmp_path, pkey):
    mute = node_for(tmp_path, pkey, reachable=False)
    slots = CountingSlots()
    try:
        with pytest.raises(ssh.SSHTimeout) as e:
            ssh.wait_for_ssh(mute.address, mute.port, USER, pkey, time.monotonic() + 1.5,
                             connect_timeout=0.3, interval=0.1, logins=slots)
        assert slots.taken == 0
        assert 'no SSH banner yet' in str(e.value)
    finally:
        mute.stop()


def test_a_node_that_answers_takes_one_slot_and_gives_it_back(tmp_path, pkey):
    live = node_for(tmp_path, pkey)
    slots = CountingSlots()
    try:
        client = ssh.wait_for_ssh(live.address, live.port, USER, pkey, time.monotonic() + 10,
                                  connect_timeout=5, interval=0.1, logins=slots)
        try:
            assert ssh.run(client, 'echo ok', 10) == (0, 'ok\n')
        finally:
            client.close()
        assert slots.taken == 1
        assert slots.lock.acquire(blocking=False)   # given back
        slots.lock.release()
    finally:
        live.stop()
