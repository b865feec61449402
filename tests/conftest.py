"""Shared fixtures: a real database per test, on SQLite and on MariaDB/MySQL.

The MySQL server comes from $DEVSTACK_GATE_TEST_MYSQL_URL (./dev.sh test sets
it after finding or starting a server).  Each test gets its own database,
dropped afterwards.  With CI=true a missing server fails the MySQL tests
instead of skipping them.
"""

import contextlib
import os
import sys
import urllib.parse
import uuid

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MYSQL_ENV = 'DEVSTACK_GATE_TEST_MYSQL_URL'

from bench.common import mysql_connect  # noqa: E402,F401  (the tests' admin connection too)

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Fetch's cache of validated configurations goes to a directory of this run, never ~/.cache.
if 'DEVSTACK_GATE_CACHE_DIR' not in os.environ:
    import atexit
    import shutil
    import tempfile
    _cache_root = tempfile.mkdtemp(prefix='devstack-gate-test-cache.')
    atexit.register(shutil.rmtree, _cache_root, True)
    os.environ['DEVSTACK_GATE_CACHE_DIR'] = os.path.join(_cache_root, 'cache')


def mysql_server_url():
    url = os.environ.get(MYSQL_ENV)
    if not url:
        if os.environ.get('CI') == 'true':
            pytest.fail('$%s is not set: CI never skips the MySQL tests' % MYSQL_ENV)
        pytest.skip('no MySQL server: set $%s or run ./dev.sh test' % MYSQL_ENV)
    return url




def mysql_database_url(server_url, name):
    """The server URL with a database name in its path."""
    u = urllib.parse.urlsplit(server_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, '/' + name, u.query, ''))


@pytest.fixture
def mysql_url():
    """A fresh, empty MySQL database for this test; dropped afterwards."""
    server = mysql_server_url()
    name = 'dgtest_%s' % uuid.uuid4().hex[:12]
    conn = mysql_connect(server)
    conn.cursor().execute('CREATE DATABASE `%s`' % name)
    conn.close()
    yield mysql_database_url(server, name)
    conn = mysql_connect(server)
    conn.cursor().execute('DROP DATABASE IF EXISTS `%s`' % name)
    conn.close()


@pytest.fixture
def sqlite_url(tmp_path):
    return 'sqlite:///%s' % (tmp_path / 'devstack-gate.db')


@pytest.fixture(params=['sqlite', pytest.param('mysql', marks=pytest.mark.mysql)])
def db_url(request, tmp_path):
    """Each test that takes db_url runs once per backend."""
    if request.param == 'sqlite':
        return request.getfixturevalue('sqlite_url')
    return request.getfixturevalue('mysql_url')


@pytest.fixture
def clouds_for(tmp_path):
    """clouds_for(*cloud_configs) -> running local clouds, torn down after the test."""
    from localcloud.testing import local_clouds
    with contextlib.ExitStack() as stack:
        def start(*configs):
            return stack.enter_context(local_clouds({'clouds': list(configs)},
                                                    tmp_dir=str(tmp_path)))
        yield start
