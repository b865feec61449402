"""The default ready check answers from /etc/hosts and sends no DNS query.

`getent hosts localhost` asks for an IPv6 address first; an /etc/hosts without
'::1 localhost' (this machine kind's) turns that into a DNS query, and a
burst of 200 of them, one per node of a big fill, had the resolver drop some:
each of those checks waited out the resolver's 5 s timeout.

The check runs in a mount and network namespace of its own (unshare), with
/etc/hosts holding only '127.0.0.1 localhost', /etc/nsswitch.conf 'files dns'
and /etc/resolv.conf pointing at a UDP server on 127.0.0.1:53 that records
each query and refuses it.  Skipped where namespaces cannot be made.
"""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from devstackgate import config

RECORDER = r'''
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('127.0.0.1', 53))
s.settimeout(float(sys.argv[2]))
open(sys.argv[1] + '.up', 'w').close()
with open(sys.argv[1], 'w') as out:
    while True:
        try:
            data, peer = s.recvfrom(512)
        except socket.timeout:
            break
        out.write(data[12:].hex() + '\n')
        out.flush()
        s.sendto(data[:2] + b'\x81\x85' + data[4:], peer)    # REFUSED, at once
'''

# $1 the directory, $2 python, $3 the command to run.
SCRIPT = r'''
set -e
ip link set lo up
mount --bind "$1/hosts" /etc/hosts
mount --bind "$1/nsswitch.conf" /etc/nsswitch.conf
mount --bind "$1/resolv.conf" /etc/resolv.conf
"$2" "$1/recorder.py" "$1/queries" 10 &
recorder=$!
i=0
while [ ! -e "$1/queries.up" ]; do
    i=$((i + 1)); [ "$i" -lt 500 ] || exit 97; sleep 0.01
done
set +e
sh -c "$3" >/dev/null 2>&1
kill "$recorder"
exit 0
'''


def _dns_queries(tmp_path, command):
    """The DNS queries `command` sent (hex, one per query), or None: no namespaces here."""
    if not shutil.which('unshare') or not shutil.which('ip'):
        return None
    (tmp_path / 'hosts').write_text('127.0.0.1 localhost\n')
    (tmp_path / 'nsswitch.conf').write_text('hosts: files dns\n')
    (tmp_path / 'resolv.conf').write_text('nameserver 127.0.0.1\noptions timeout:1 attempts:1\n')
    (tmp_path / 'recorder.py').write_text(RECORDER)
    for stale in ('queries', 'queries.up'):       # an earlier call's: wait for this recorder
        (tmp_path / stale).unlink(missing_ok=True)
    try:
        done = subprocess.run(['unshare', '--mount', '--net', 'sh', '-c', SCRIPT, 'sh',
                               str(tmp_path), sys.executable, command],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    path = tmp_path / 'queries'
    return path.read_text().split() if path.exists() else []


@pytest.fixture
def queries(tmp_path):
    def run(command):
        got = _dns_queries(tmp_path, command)
        if got is None:
            pytest.skip('cannot make a mount and network namespace here (unshare)')
        return got
    return run


def test_the_harness_sees_the_ipv6_lookup_getent_hosts_sends(queries):
    got = queries('getent hosts localhost')
    assert got, 'getent hosts localhost sent no DNS query: the harness cannot tell'
    assert any(q.startswith('096c6f63616c686f737400001c') for q in got), got   # localhost AAAA


def test_the_default_ready_check_sends_no_dns_query(queries):
    assert queries(config.DEFAULT_READY_CHECK) == []


def test_the_demo_ready_checks_send_none_either(queries):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, 'demo', 'devstack-gate.yaml')) as f:
        checks = {i['ready-check'] for p in yaml.safe_load(f)['providers'] for i in p['images']
                  if 'ready-check' in i}
    assert checks
    for check in checks:
        assert queries(check) == [], check
