"""A MySQL server that is restarting (refusing connections) is waited for, up to
db-reconnect-wait, instead of failing every stage that opens the database then."""

import logging
import socket
import threading
import time
import urllib.parse

import pytest

import vmdatabase
from devstackgate.errors import DatabaseError
from tests.conftest import mysql_server_url


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def forward(listener, target, stop):
    """Accept on listener and pipe each connection to target (a TCP or unix address)."""
    def pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            client, _ = listener.accept()
        except socket.timeout:
            continue
        family = socket.AF_UNIX if isinstance(target, str) else socket.AF_INET
        upstream = socket.socket(family)
        upstream.connect(target)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()
    listener.close()


def server_target(server_url):
    u = urllib.parse.urlsplit(server_url)
    q = urllib.parse.parse_qs(u.query)
    if 'unix_socket' in q:
        return q['unix_socket'][0]
    return (u.hostname or '127.0.0.1', u.port or 3306)


@pytest.mark.mysql
def test_a_server_that_comes_back_within_the_wait_is_used(mysql_url, caplog):
    target = server_target(mysql_server_url())
    port = free_port()
    database = vmdatabase.parse_url(mysql_url).database
    url = 'mysql://root@127.0.0.1:%d/%s' % (port, database)
    stop = threading.Event()

    def come_back():            # the "restart": nothing listens for 0.8 s
        time.sleep(0.8)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(('127.0.0.1', port))
        listener.listen(16)
        forward(listener, target, stop)
    thread = threading.Thread(target=come_back, daemon=True)
    thread.start()
    try:
        caplog.set_level(logging.WARNING, logger='state')
        started = time.monotonic()
        db = vmdatabase.Database(url, reconnect_wait=10).upgrade()
        assert db.version() == vmdatabase.schema_version()
        assert 0.7 < time.monotonic() - started < 8
        warnings = [r.getMessage() for r in caplog.records if 'does not answer' in r.getMessage()]
        assert len(warnings) == 1, warnings     # one line, not one per attempt
        db.close()
    finally:
        stop.set()
        thread.join(5)


def test_a_server_that_stays_away_fails_after_the_wait():
    url = 'mysql://root@127.0.0.1:%d/nothing' % free_port()
    started = time.monotonic()
    with pytest.raises(DatabaseError) as e:
        vmdatabase.Database(url, reconnect_wait=0.6).upgrade()
    elapsed = time.monotonic() - started
    assert 0.5 < elapsed < 5
    assert str(e.value).startswith('cannot connect to mysql://root@127.0.0.1:')


def test_a_refused_login_is_not_waited_for(mysql_url):
    url = mysql_url.replace('root@', 'nobody_%d@' % free_port())
    started = time.monotonic()
    with pytest.raises(DatabaseError):
        vmdatabase.Database(url, reconnect_wait=30).upgrade()
    assert time.monotonic() - started < 5
