"""devstackgate.mysqlwire: the tiny MySQL client of fetch's fast path.

Pure unit tests (scrambles, literals, length-encoded values), a fake server in
a thread for the protocol's edge cases, and the real MariaDB/MySQL server.
"""

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

import pytest

import vmdatabase
from devstackgate import mysqlwire
from devstackgate.mysqlwire import (
    Error,
    NotSupported,
    OperationalError,
    ProgrammingError,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NONCE = b'0123456789abcdefghij'     # a 20-byte scramble


# -- pure units ----------------------------------------------------------------

def _xor(a, b):
    return bytes(x ^ y for x, y in zip(a, b))


def test_scramble_native_known_vector():
    sha1 = lambda d: hashlib.sha1(d).digest()
    expected = _xor(sha1(b'secret'), sha1(NONCE + sha1(sha1(b'secret'))))
    assert mysqlwire.scramble_native('secret', NONCE) == expected
    assert len(expected) == 20
    assert mysqlwire.scramble_native('', NONCE) == b''
    assert mysqlwire.scramble_native(None, NONCE) == b''
    # The server's stored hash is '*' + SHA1(SHA1(pw)): PASSWORD('secret').
    stored = hashlib.sha1(hashlib.sha1(b'secret').digest()).hexdigest().upper()
    assert stored == '14E65567ABDB5135D0CFD9A70B3032C179A49EE7'


def test_scramble_caching_sha2_known_vector():
    sha = lambda d: hashlib.sha256(d).digest()
    pw = 'pässwörd😀'.encode('utf-8')
    expected = _xor(sha(pw), sha(sha(sha(pw)) + NONCE))
    assert mysqlwire.scramble_caching_sha2('pässwörd😀', NONCE) == expected
    assert len(expected) == 32
    assert mysqlwire.scramble_caching_sha2('', NONCE) == b''


def test_lenenc_integers():
    read = mysqlwire.read_lenenc
    assert read(b'\x00', 0) == (0, 1)
    assert read(b'x\xfa', 1) == (250, 2)
    assert read(b'\xfb', 0) == (None, 1)
    assert read(b'\xfc\xfb\x00', 0) == (251, 3)
    assert read(b'\xfc\xff\xff', 0) == (0xFFFF, 3)
    assert read(b'\xfd\x00\x00\x01', 0) == (0x10000, 4)
    assert read(b'\xfe' + (2 ** 64 - 1).to_bytes(8, 'little'), 0) == (2 ** 64 - 1, 9)
    assert read(b'\xfe\x01\x00\x00\x00\x00\x00\x00\x00', 0) == (1, 9)
    for bad in (b'\xff', b'\xfc\x01', b'\xfd\x01\x02', b'\xfe\x01'):
        with pytest.raises(OperationalError):
            read(bad, 0)


def test_lenenc_strings():
    read = mysqlwire.read_lenenc_bytes
    assert read(b'\x03abcrest', 0) == (b'abc', 4)
    assert read(b'\xfb', 0) == (None, 1)
    long = b'z' * 300
    assert read(b'\xfc' + (300).to_bytes(2, 'little') + long, 0) == (long, 303)
    assert read(b'\xfd' + (70000).to_bytes(3, 'little') + b'y' * 70000, 0)[1] == 70004
    with pytest.raises(OperationalError):
        read(b'\x05abc', 0)


def test_literals():
    lit = mysqlwire.literal
    assert lit(None) == 'NULL'
    assert lit(True) == '1' and lit(False) == '0'
    assert lit(0) == '0' and lit(-12) == '-12' and lit(2 ** 70) == str(2 ** 70)
    assert lit('') == "_utf8mb4''"
    assert lit("a'b") == "_utf8mb4 X'612762'"
    assert lit('😀') == "_utf8mb4 X'f09f9880'"
    assert lit(b'\x00\xff') == "X'00ff'" and lit(bytearray(b'a')) == "X'61'"
    assert lit(b'') == "X''"
    assert lit(1.5) == '1.5e0' and lit(1e300) == '1e+300' and lit(-0.0) == '-0.0e0'
    for bad in (float('inf'), float('-inf'), float('nan')):
        with pytest.raises(ValueError):
            lit(bad)
    import decimal
    import enum
    for bad in (decimal.Decimal(1), object(), [1], {'a': 1}):
        with pytest.raises(TypeError):
            lit(bad)

    class Number(enum.IntEnum):
        SEVEN = 7
    assert lit(Number.SEVEN) == '7'


def test_interpolate():
    ip = mysqlwire.interpolate
    assert ip('SELECT %s, %s', ('a', 1)) == "SELECT _utf8mb4 X'61', 1"
    assert ip("SELECT %s LIKE 'a%%'", [None]) == "SELECT NULL LIKE 'a%'"
    # The parameter's own % and %s are data, never placeholders.
    assert ip('SELECT %s, %s', ['%s', '%%']) == "SELECT _utf8mb4 X'2573', _utf8mb4 X'2525'"
    assert ip("SELECT '%'") == "SELECT '%'"            # no parameters: as it is
    assert ip('SELECT 1', ()) == 'SELECT 1'
    assert ip('SELECT 1', None) == 'SELECT 1'
    for sql, params in (('SELECT %s, %s', [1]), ('SELECT %s', [1, 2]), ('SELECT 1', [1]),
                        ('SELECT %d', [1]), ("SELECT '%' = %s", [1]), ('SELECT %', [1])):
        with pytest.raises(ProgrammingError):
            ip(sql, params)


def test_errors_format():
    assert str(Error(1064, 'bad', '42000')) == '1064 (42000): bad'
    assert str(Error(1040, 'busy')) == '1040: busy'
    assert str(OperationalError(None, 'gone')) == 'gone'
    e = OperationalError(2013, 'lost', 'HY000')
    assert isinstance(e, Error) and e.errno == 2013 and e.msg == 'lost' and e.sqlstate == 'HY000'


def test_import_and_connect_are_light():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]       # nobody listens there once closed
    # Connecting (refused here) resolves the host without the idna codec (and re).
    code = ('import sys, devstackgate.mysqlwire as m\n'
            'try:\n    m.connect("127.0.0.1", %d, "root", password="pw", timeout=2)\n'
            'except m.OperationalError:\n    pass\n'
            'print(sorted(m for m in ("ssl", "re", "logging", "mysql", "socket", "hashlib",'
            ' "dataclasses", "enum", "encodings.idna") if m in sys.modules))' % port)
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == '[]'


def test_refused_connection_is_operational():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]       # nobody listens there once closed
    with pytest.raises(OperationalError) as info:
        mysqlwire.connect('127.0.0.1', port, 'root', password='hunter2', timeout=2)
    assert info.value.errno == 2003 and 'hunter2' not in str(info.value)
    with pytest.raises(OperationalError) as info:
        mysqlwire.connect('no-such-host.invalid', 3306, 'root', timeout=2)
    assert info.value.errno == 2005


# -- a fake server ---------------------------------------------------------------

NATIVE, SHA2 = b'mysql_native_password', b'caching_sha2_password'
SERVER_CAPS = 0x1 | 0x8 | 0x200 | 0x2000 | 0x8000 | (1 << 19)


def handshake(plugin=NATIVE, caps=SERVER_CAPS, version=10):
    return (bytes((version,)) + b'8.0.99-fake\0' + (42).to_bytes(4, 'little') + NONCE[:8]
            + b'\0' + (caps & 0xFFFF).to_bytes(2, 'little') + b'\x2d\x02\x00'
            + (caps >> 16).to_bytes(2, 'little') + bytes((21,)) + bytes(10)
            + NONCE[8:] + b'\0' + plugin + b'\0')


OK = b'\x00\x00\x00\x02\x00\x00\x00'


class Peer:
    """The server's end of one connection: packets with explicit sequence ids."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b''

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv(self):
        """(seq, payload) of one logical packet, continuations joined."""
        payload, first = b'', None
        while True:
            header = self._read(4)
            first = header[3] if first is None else first
            length = int.from_bytes(header[:3], 'little')
            payload += self._read(length)
            if length < 0xFFFFFF:
                return first, payload

    def send(self, seq, payload):
        while True:
            part, payload = payload[:0xFFFFFF], payload[0xFFFFFF:]
            self.sock.sendall(len(part).to_bytes(3, 'little') + bytes((seq,)) + part)
            seq = (seq + 1) & 0xFF
            if len(part) < 0xFFFFFF:
                return seq

    def login(self, plugin=NATIVE):
        """The handshake, the client's answer (returned) and OK, then SET autocommit=0."""
        self.send(0, handshake(plugin))
        seq, answer = self.recv()
        assert seq == 1
        self.send(2, OK)
        assert self.recv() == (0, b'\x03SET autocommit=0')
        self.send(1, OK)
        return answer


class FakeServer:
    """Runs script(peer) for one connection in a thread; its exception, if any, on join."""

    def __init__(self, script):
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.error, self.result = None, None
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    def _run(self, script):
        try:
            sock, _ = self.listener.accept()
            with sock:
                self.result = script(Peer(sock))
        except BaseException as e:     # noqa: B036 (reported by join)
            self.error = e
        finally:
            self.listener.close()

    def join(self):
        self.thread.join(10)
        if self.error is not None:
            raise self.error
        return self.result


def parse_answer(answer):
    """The HandshakeResponse41's (flags, charset, user, auth, database, plugin)."""
    flags = int.from_bytes(answer[:4], 'little')
    charset = answer[8]
    end = answer.index(b'\0', 32)
    user = answer[32:end]
    auth = answer[end + 2:end + 2 + answer[end + 1]]
    rest = answer[end + 2 + len(auth):].split(b'\0')
    database = rest.pop(0) if flags & 8 else None
    return flags, charset, user, auth, database, rest[0]


def test_fake_native_login_and_result_set():
    def script(peer):
        answer = peer.login()
        assert peer.recv() == (0, b'\x03SELECT 1')
        coldef = lambda name, ftype, charset: (
            b'\x03def\x00\x00\x00' + bytes((len(name),)) + name + b'\x00\x0c'
            + charset.to_bytes(2, 'little') + bytes(4) + bytes((ftype,)) + bytes(5))
        seq = peer.send(1, b'\x04')
        for col in (coldef(b'i', 8, 63), coldef(b'f', 5, 63), coldef(b's', 253, 45),
                    coldef(b'b', 252, 63)):
            seq = peer.send(seq, col)
        seq = peer.send(seq, b'\xfe\x00\x00\x02\x00')
        seq = peer.send(seq, b'\x02-7\x031.5\x02\xc3\xa9\x02\x00\xff')
        big = b'x' * 300
        seq = peer.send(seq, b'\xfb\xfb\xfc' + (300).to_bytes(2, 'little') + big + b'\xfb')
        peer.send(seq, b'\xfe\x00\x00\x02\x00')
        assert peer.recv() == (0, b'\x01')     # COM_QUIT
        return answer

    server = FakeServer(script)
    conn = mysqlwire.connect('127.0.0.1', server.port, 'bob', password='pw', database='db',
                             timeout=5)
    assert conn.server_info == '8.0.99-fake' and conn.connection_id == 42
    cur = conn.cursor().execute('SELECT 1')
    assert cur.rowcount == 2 and [d[0] for d in cur.description] == ['i', 'f', 's', 'b']
    assert cur.fetchone() == (-7, 1.5, 'é', b'\x00\xff')
    assert cur.fetchall() == [(None, None, 'x' * 300, None)]
    assert cur.fetchone() is None
    conn.close()
    conn.close()
    flags, charset, user, auth, database, plugin = parse_answer(server.join())
    assert charset == 45 and user == b'bob' and database == b'db' and plugin == NATIVE
    assert auth == mysqlwire.scramble_native('pw', NONCE)
    assert flags & 0x200 and flags & 0x8000 and flags & (1 << 19) and flags & 0x8
    # Never SSL, LOAD DATA LOCAL, multiple statements or results, DEPRECATE_EOF.
    assert not flags & (0x800 | 0x80 | (1 << 16) | (1 << 17) | (1 << 24))


def test_fake_auth_switch_to_caching_sha2_fast_auth():
    def script(peer):
        peer.send(0, handshake(NATIVE))
        assert peer.recv()[0] == 1
        peer.send(2, b'\xfe' + SHA2 + b'\0' + b'ABCDEFGHIJKLMNOPQRST' + b'\0')
        seq, auth = peer.recv()
        assert seq == 3
        assert auth == mysqlwire.scramble_caching_sha2('pw', b'ABCDEFGHIJKLMNOPQRST')
        peer.send(4, b'\x01\x03')               # fast auth succeeded
        peer.send(5, OK)
        assert peer.recv() == (0, b'\x03SET autocommit=0')
        peer.send(1, OK)
        peer.recv()

    server = FakeServer(script)
    conn = mysqlwire.connect('127.0.0.1', server.port, 'bob', password='pw', timeout=5)
    conn.close()
    server.join()


def test_fake_caching_sha2_full_auth_is_refused():
    def script(peer):
        peer.send(0, handshake(SHA2))
        _, answer = peer.recv()
        assert parse_answer(answer)[3] == mysqlwire.scramble_caching_sha2('Secret-7', NONCE)
        assert parse_answer(answer)[5] == SHA2
        peer.send(2, b'\x01\x04')               # perform full authentication
        with pytest.raises(EOFError):           # and nothing else: no password in clear
            peer.recv()

    server = FakeServer(script)
    with pytest.raises(NotSupported) as info:
        mysqlwire.connect('127.0.0.1', server.port, 'bob', password='Secret-7', timeout=5)
    assert 'Secret-7' not in str(info.value)
    server.join()


@pytest.mark.parametrize('switch', [b'\xfe' + b'client_ed25519\0' + NONCE, b'\xfe'])
def test_fake_unknown_plugin_is_refused(switch):
    def script(peer):
        peer.send(0, handshake(b'auth_gssapi_client'))
        answer = peer.recv()[1]
        assert parse_answer(answer)[5] == NATIVE      # it offers what it knows
        peer.send(2, switch)
        with pytest.raises(EOFError):
            peer.recv()

    server = FakeServer(script)
    with pytest.raises(NotSupported):
        mysqlwire.connect('127.0.0.1', server.port, 'bob', password='pw', timeout=5)
    server.join()


@pytest.mark.parametrize('packet', [handshake(version=9), handshake(caps=0x8000 | (1 << 19))])
def test_fake_old_servers_are_refused(packet):
    server = FakeServer(lambda peer: peer.send(0, packet))
    with pytest.raises(NotSupported):
        mysqlwire.connect('127.0.0.1', server.port, 'bob', timeout=5)
    server.join()


def test_fake_error_before_handshake():
    server = FakeServer(lambda peer: peer.send(0, b'\xff\x10\x04Too many connections'))
    with pytest.raises(Error) as info:
        mysqlwire.connect('127.0.0.1', server.port, 'bob', timeout=5)
    assert info.value.errno == 1040 and info.value.sqlstate is None
    assert str(info.value) == '1040: Too many connections'
    server.join()


def test_fake_wrong_sequence_id():
    def script(peer):
        peer.login()
        peer.recv()
        peer.send(2, OK)                       # 1 was due

    server = FakeServer(script)
    conn = mysqlwire.connect('127.0.0.1', server.port, 'bob', timeout=5)
    with pytest.raises(OperationalError) as info:
        conn.cursor().execute('SELECT 1')
    assert info.value.errno == 2013 and 'sequence' in str(info.value)
    assert 'closed' in repr(conn)
    with pytest.raises(OperationalError):      # and the connection is gone for good
        conn.cursor().execute('SELECT 1')
    conn.close()
    server.join()


def test_fake_wrong_sequence_id_in_handshake():
    server = FakeServer(lambda peer: peer.send(3, handshake()))
    with pytest.raises(OperationalError):
        mysqlwire.connect('127.0.0.1', server.port, 'bob', timeout=5)
    server.join()


def test_fake_packets_over_16mb_both_ways():
    size = 0xFFFFFF + 1000

    def script(peer):
        peer.login()
        seq, query = peer.recv()                # the client split it; Peer joins
        assert seq == 0 and len(query) == 1 + len("SELECT ''") + size
        value = b'v' * size
        seq = peer.send(2, b'\x01')              # after the query's two packets
        seq = peer.send(seq, b'\x03def\x00\x00\x00\x01v\x00\x0c\x2d\x00' + bytes(4)
                        + b'\xfc' + bytes(5))
        seq = peer.send(seq, b'\xfe\x00\x00\x02\x00')
        seq = peer.send(seq, b'\xfe' + size.to_bytes(8, 'little') + value)  # not an EOF
        peer.send(seq, b'\xfe\x00\x00\x02\x00')
        seq, query = peer.recv()                # exactly 0xFFFFFF: an empty packet ends it
        assert len(query) == 0xFFFFFF
        peer.send(2, OK)
        peer.recv()

    server = FakeServer(script)
    conn = mysqlwire.connect('127.0.0.1', server.port, 'bob', timeout=10)
    cur = conn.cursor().execute("SELECT '" + 'q' * size + "'")
    assert cur.fetchall() == [('v' * size,)]
    conn.cursor().execute('q' * (0xFFFFFF - 1))      # with its 0x03: 0xFFFFFF
    conn.close()
    server.join()


def test_fake_local_infile_request_is_never_answered_with_a_file():
    def script(peer):
        peer.login()
        peer.recv()
        peer.send(1, b'\xfb/etc/passwd')
        with pytest.raises(EOFError):
            peer.recv()

    server = FakeServer(script)
    conn = mysqlwire.connect('127.0.0.1', server.port, 'bob', timeout=5)
    with pytest.raises(OperationalError):
        conn.cursor().execute('SELECT 1')
    server.join()


def test_fake_read_timeout_and_close_mid_result():
    gate = threading.Event()

    def script(peer):
        peer.login()
        peer.recv()                             # never answered: the client times out
        gate.wait(5)

    server = FakeServer(script)
    conn = mysqlwire.connect('127.0.0.1', server.port, 'bob', timeout=0.3)
    started = time.monotonic()
    with pytest.raises(OperationalError) as info:
        conn.cursor().execute('SELECT 1')
    assert 'timed out' in str(info.value) and time.monotonic() - started < 3
    gate.set()
    server.join()

    def script2(peer):
        peer.login()
        peer.recv()
        peer.send(1, b'\x01')                   # a column count, then the socket closes

    server = FakeServer(script2)
    conn = mysqlwire.connect('127.0.0.1', server.port, 'bob', timeout=5)
    with pytest.raises(OperationalError):
        conn.cursor().execute('SELECT 1')
    server.join()


# -- the real server -----------------------------------------------------------

def _params(url):
    u = urllib.parse.urlsplit(url)
    return dict(host=u.hostname or '127.0.0.1', port=u.port or 3306, user=u.username or 'root',
                password=u.password, database=u.path.lstrip('/') or None)


@pytest.fixture
def wire(mysql_url):
    """connect(**overrides) to the test's database; all closed afterwards."""
    opened = []

    def connect(**kw):
        conn = mysqlwire.connect(**dict(_params(mysql_url), timeout=10, **kw))
        opened.append(conn)
        return conn
    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def nodes(mysql_url):
    """The test database with vmdatabase's schema."""
    db = vmdatabase.Database(mysql_url)
    db.upgrade()
    db.close()
    return mysql_url


@pytest.fixture
def admin(mysql_url):
    conn = mysqlwire.connect(**dict(_params(mysql_url), database=None, autocommit=True))
    yield conn.cursor()
    conn.close()


def _insert_node(cur, label='l', state='ready', state_time=1.0, **extra):
    cols = dict(provider='p', label=label, state=state, state_time=state_time, created=0.5,
                **extra)
    cur.execute('INSERT INTO nodes (%s) VALUES (%s)' % (', '.join(cols), ', '.join(
        ['%s'] * len(cols))), list(cols.values()))
    return cur.lastrowid


NASTY = ['', 'plain', "it's", 'a "b"', 'back\\slash', '\\', "\\'", "' OR 1=1 --",
         "\\' ; DROP TABLE nodes; --", '%', '%s', '%%', '100%', 'nul\x00byte', '\x00',
         'é ñ ü', '日本語', '😀🚀 4-byte', 'tab\tnew\nline\r', "x'41'", '_utf8mb4 X', ' ',
         'trailing ']


@pytest.mark.mysql
def test_round_trip_of_every_type(wire, nodes):
    conn = wire()
    cur = conn.cursor()
    cur.execute('CREATE TABLE t (i BIGINT, f DOUBLE, s VARCHAR(255), x TEXT, b BLOB)')
    floats = [0.0, -0.0, 0.1, 1 / 3, 1e300, -1e-300, 5e-324, time.time(), 2.0 ** 53]
    for n, value in enumerate(NASTY):
        cur.execute('INSERT INTO t (i, f, s, x, b) VALUES (%s, %s, %s, %s, %s)',
                    (n, floats[n % len(floats)], value, value, value.encode('utf-8')))
        assert cur.rowcount == 1
    cur.execute('INSERT INTO t VALUES (%s, %s, %s, %s, %s)', (True, None, None, None, None))
    cur.execute('INSERT INTO t (i, b) VALUES (%s, %s)', (-2 ** 63, bytes(range(256))))
    for n, value in enumerate(NASTY):
        cur.execute('SELECT i, f, s, x, b FROM t WHERE s = %s AND x = %s AND b = %s AND i = %s',
                    (value, value, value.encode('utf-8'), n))
        rows = cur.fetchall()
        assert rows == [(n, floats[n % len(floats)], value, value, value.encode('utf-8'))]
        assert all(type(v) is t for v, t in zip(rows[0], (int, float, str, str, bytes)))
    cur.execute('SELECT COUNT(*) FROM nodes')
    assert cur.fetchall() == [(0,)]             # still there: nothing was injected
    cur.execute('SELECT i, f, s FROM t WHERE b IS NULL')
    assert cur.fetchall() == [(1, None, None)]
    cur.execute('SELECT b FROM t WHERE i = %s', [-2 ** 63])
    assert cur.fetchall() == [(bytes(range(256)),)]
    cur.execute("SELECT %s, %s, %s, %s, 'a%%b', %s", (7, 2.5, 'x', None, b''))
    assert cur.fetchall() == [(7, 2.5, 'x', None, 'a%b', b'')]
    cur.execute("SELECT '%s %%'")              # no parameters: sent as it is
    assert cur.fetchall() == [('%s %%',)]


@pytest.mark.mysql
def test_no_backslash_escapes_changes_nothing(wire):
    cur = wire().cursor()
    cur.execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES,ANSI_QUOTES')")
    for value in NASTY:
        cur.execute('SELECT %s', [value])
        assert cur.fetchall() == [(value,)]


@pytest.mark.mysql
def test_nodes_columns_types_and_index(wire, nodes):
    conn = wire()
    cur = conn.cursor()
    for i in range(60):
        _insert_node(cur, label='l%d' % (i % 6), state=('ready', 'used')[i % 2],
                     state_time=1000.0 + i)
    node_id = _insert_node(cur, label='é😀', name='n', ip='10.0.0.1', host_key="ssh-rsa 'k'",
                           image_id=3, hold_until=None)
    conn.commit()
    cur.execute('SELECT id, provider, label, image_id, name, ip, host_key, state_time, '
                'hold_until, claimed_by FROM nodes WHERE label = %s AND state = %s',
                ('é😀', 'ready'))
    assert cur.fetchall() == [(node_id, 'p', 'é😀', 3, 'n', '10.0.0.1', "ssh-rsa 'k'", 1.0,
                               None, None)]
    cur.execute('SELECT COUNT(*) FROM nodes WHERE label = %s', ['L1'])     # the collation's
    assert cur.fetchall() == [(10,)]
    cur.execute('ANALYZE TABLE nodes')
    cur.execute('EXPLAIN SELECT id FROM nodes WHERE label = %s AND state = %s '
                'ORDER BY state_time, id LIMIT 1 FOR UPDATE SKIP LOCKED', ('l1', 'ready'))
    plan = dict(zip([d[0] for d in cur.description], cur.fetchall()[0]))
    assert plan['key'] == 'nodes_claim' and plan['ref'] == 'const,const', plan


@pytest.mark.mysql
def test_rowcount_and_lastrowid(wire, nodes):
    cur = wire().cursor()
    first = _insert_node(cur)
    second = _insert_node(cur)
    assert second == first + 1 and cur.rowcount == 1
    cur.execute('UPDATE nodes SET state = %s WHERE state = %s', ('used', 'ready'))
    assert cur.rowcount == 2
    cur.execute('UPDATE nodes SET state = %s WHERE state = %s', ('used', 'used'))
    assert cur.rowcount == 0                    # affected, not found, rows
    cur.execute('SELECT id FROM nodes ORDER BY id')
    assert cur.rowcount == 2 and cur.lastrowid is None
    assert cur.fetchone() == (first,) and list(cur) == [(second,)]
    # More than 256 packets: the sequence id wraps around.
    cur.execute('WITH RECURSIVE c (n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c '
                'WHERE n < %s) SELECT n, REPEAT(%s, n) FROM c', (1000, 'é'))
    rows = cur.fetchall()
    assert cur.rowcount == 1000 and rows[-1] == (1000, 'é' * 1000) and rows[299][0] == 300


@pytest.mark.mysql
def test_commit_and_rollback_seen_from_another_connection(wire, nodes):
    writer, reader = wire(), wire()
    cur = writer.cursor()
    cur.execute('SELECT @@autocommit')
    assert cur.fetchall() == [(0,)]
    _insert_node(cur, label='rolled')
    writer.rollback()
    _insert_node(cur, label='kept')
    look = reader.cursor()
    look.execute('SELECT label FROM nodes')
    assert look.fetchall() == []                # not committed yet
    reader.rollback()                           # a fresh snapshot
    writer.commit()
    look.execute('SELECT label FROM nodes')
    assert look.fetchall() == [('kept',)]
    auto = wire(autocommit=True).cursor()
    auto.execute('SELECT @@autocommit')
    assert auto.fetchall() == [(1,)]


@pytest.mark.mysql
def test_server_errors(wire, nodes):
    conn = wire()
    cur = conn.cursor()
    with pytest.raises(Error) as info:
        cur.execute('SELEC 1')
    assert info.value.errno == 1064 and info.value.sqlstate == '42000'
    assert str(info.value).startswith('1064 (42000): ')
    with pytest.raises(Error) as info:
        cur.execute('SELECT * FROM no_such_table')
    assert info.value.errno == 1146 and type(info.value) is Error
    cur.execute('SELECT 1')                     # the connection goes on after an ERR
    assert cur.fetchall() == [(1,)]


@pytest.mark.mysql
def test_lock_wait_timeout(wire, nodes):
    holder, waiter = wire(), wire()
    node_id = _insert_node(holder.cursor())
    holder.commit()
    holder.cursor().execute('SELECT id FROM nodes WHERE id = %s FOR UPDATE', [node_id])
    cur = waiter.cursor()
    cur.execute('SET SESSION innodb_lock_wait_timeout=1')
    with pytest.raises(Error) as info:
        cur.execute('UPDATE nodes SET state = %s WHERE id = %s', ('used', node_id))
    assert info.value.errno == 1205


@pytest.mark.mysql
def test_skip_locked_skips_a_held_row(wire, nodes):
    a, b = wire(), wire()
    cur = a.cursor()
    old = _insert_node(cur, state_time=1.0)
    new = _insert_node(cur, state_time=2.0)
    a.commit()
    sql = ('SELECT id FROM nodes WHERE label = %s AND state = %s ORDER BY state_time, id '
           'LIMIT 1 FOR UPDATE SKIP LOCKED')
    assert cur.execute(sql, ('l', 'ready')).fetchall() == [(old,)]
    other = b.cursor()
    assert other.execute(sql, ('l', 'ready')).fetchall() == [(new,)]
    other.execute('UPDATE nodes SET state = %s WHERE id = %s AND state = %s',
                  ('used', new, 'ready'))
    assert other.rowcount == 1
    b.commit()
    a.rollback()
    assert cur.execute(sql, ('l', 'ready')).fetchall() == [(old,)]


@pytest.mark.mysql
def test_server_info(wire):
    conn = wire()
    version = conn.cursor().execute('SELECT VERSION()').fetchall()[0][0]
    assert conn.server_info.endswith(version)        # MariaDB's starts with 5.5.5-
    from devstackgate.claim import server_has_skip_locked
    assert server_has_skip_locked(conn.server_info)
    assert conn.cursor().execute('SELECT CONNECTION_ID()').fetchall() == [
        (conn.connection_id,)]


@pytest.mark.mysql
def test_killed_connection_is_operational(wire):
    victim, killer = wire(), wire(autocommit=True)
    threading.Timer(0.3, killer.cursor().execute, ('KILL %s', [victim.connection_id])).start()
    with pytest.raises(OperationalError) as info:
        victim.cursor().execute('SELECT SLEEP(5)')      # the server closes it mid-query
    assert info.value.errno == 2013
    with pytest.raises(OperationalError):
        victim.cursor().execute('SELECT 1')
    idle = wire()
    killer.cursor().execute('KILL %s', [idle.connection_id])
    with pytest.raises(OperationalError):
        idle.cursor().execute('SELECT 1')
    query = wire()
    threading.Timer(0.3, killer.cursor().execute, ('KILL QUERY %s', [query.connection_id])
                    ).start()
    with pytest.raises(Error) as info:                  # only the query: it goes on
        query.cursor().execute('SELECT SLEEP(5)')
    assert info.value.errno == 1317 and type(info.value) is Error
    assert query.cursor().execute('SELECT 2').fetchall() == [(2,)]


@pytest.fixture
def user(admin):
    """make(ident) -> a new user's name, dropped afterwards."""
    made = []

    def make(ident):
        name = 'mw_%s' % uuid.uuid4().hex[:10]
        admin.execute("CREATE USER '%s'@'%%' %s" % (name, ident))    # no parameters: as is
        made.append(name)
        return name
    yield make
    for name in made:
        admin.execute("DROP USER IF EXISTS '%s'@'%%'" % name)


@pytest.mark.mysql
def test_password_users(mysql_url, user, admin):
    params = dict(_params(mysql_url), database=None, timeout=10)
    name = user("IDENTIFIED BY 'S3cret-pw'")
    admin.execute("SELECT plugin FROM mysql.user WHERE user = %s", [name])
    plugin = admin.fetchall()[0][0]
    assert plugin in ('mysql_native_password', 'caching_sha2_password', '')
    conn = mysqlwire.connect(**dict(params, user=name, password='S3cret-pw'))
    assert conn.cursor().execute('SELECT CURRENT_USER()').fetchall()[0][0].startswith(name)
    conn.close()
    with pytest.raises(Error) as info:
        mysqlwire.connect(**dict(params, user=name, password='wrong-pw'))
    assert info.value.errno == 1045 and 'wrong-pw' not in str(info.value)
    assert 'wrong-pw' not in repr(info.value)
    with pytest.raises(Error) as info:
        mysqlwire.connect(**dict(params, user=name))        # no password at all
    assert info.value.errno == 1045
    native = user("IDENTIFIED WITH mysql_native_password BY 'N4tive-pw'"
                  if 'mariadb' not in conn.server_info.lower()
                  else "IDENTIFIED VIA mysql_native_password USING PASSWORD('N4tive-pw')")
    mysqlwire.connect(**dict(params, user=native, password='N4tive-pw')).close()


@pytest.mark.mysql
def test_unsupported_plugin_user(mysql_url, user, admin):
    admin.execute("SELECT plugin_name FROM information_schema.plugins WHERE plugin_status = "
                  "'ACTIVE' AND plugin_type = 'AUTHENTICATION'")
    plugins = {row[0] for row in admin.fetchall()}
    if 'ed25519' in plugins:
        name = user("IDENTIFIED VIA ed25519 USING PASSWORD('Ed-pw')")
    elif 'sha256_password' in plugins:
        name = user("IDENTIFIED WITH sha256_password BY 'Ed-pw'")
    else:
        pytest.skip('the server has no authentication plugin we do not support (%s)'
                    % ', '.join(sorted(plugins)))
    with pytest.raises(NotSupported):
        mysqlwire.connect(**dict(_params(mysql_url), user=name, password='Ed-pw',
                                 database=None, timeout=10))
