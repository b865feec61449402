"""A minimal MySQL/MariaDB client (text protocol over TCP) for fetch's fast path.

Importing mysql.connector costs a gate job's fetch ~125 ms (with ssl); this
module costs well under 2 ms: it imports only the C module ``_socket`` (the
``socket`` module would bring enum and selectors), and the SHA modules only when
a password is to be scrambled.  It speaks just what :mod:`devstackgate.claim`
needs: connect, queries with client-side interpolated ``%s`` parameters, result
sets, commit and rollback.

Supported: handshake v10 with CLIENT_PROTOCOL_41, the mysql_native_password and
caching_sha2_password (fast path) plugins, AuthSwitchRequest to either, packets
over 16 MB.  Refused (:class:`NotSupported`): TLS, unix sockets, any other auth
plugin, caching_sha2_password's full authentication (it would send the password
in clear or need RSA), LOAD DATA LOCAL (the flag is never set; a server asking
anyway loses the connection), multiple statements or result sets.

The session starts with autocommit off: :func:`connect` sends ``SET autocommit=0``
(one round trip) unless ``autocommit=True``.

Reference: the MariaDB/MySQL client/server protocol documentation.
"""

import _socket

# Capability flags (the lower 32 bits; MariaDB's extended ones are never asked for).
LONG_PASSWORD = 1
CONNECT_WITH_DB = 8
PROTOCOL_41 = 512
TRANSACTIONS = 8192
SECURE_CONNECTION = 32768
PLUGIN_AUTH = 1 << 19
_NEEDED = PROTOCOL_41 | SECURE_CONNECTION | PLUGIN_AUTH

UTF8MB4_GENERAL_CI = 45     # the same id on MariaDB and MySQL 8
BINARY_CHARSET = 63
MAX_PACKET = 0xFFFFFF       # a payload this long continues in the next packet
SERVER_MORE_RESULTS_EXISTS = 8

# Column types whose text values are returned as int / float; 6 is MYSQL_TYPE_NULL.
_INT_TYPES = frozenset((1, 2, 3, 8, 9, 13))     # TINY SHORT LONG LONGLONG INT24 YEAR
_FLOAT_TYPES = frozenset((0, 4, 5, 246))        # DECIMAL FLOAT DOUBLE NEWDECIMAL
# String and BLOB types, and BIT and GEOMETRY: bytes when their charset is binary.
_BYTES_TYPES = frozenset((15, 16, 249, 250, 251, 252, 253, 254, 255))
# The server ends a connection it kills or shuts down with one of these.
_GONE_ERRNOS = frozenset((1053, 1927, 4031))

CR_CONN_HOST_ERROR = 2003
CR_UNKNOWN_HOST = 2005
CR_SERVER_GONE = 2006
CR_SERVER_LOST = 2013
CR_MALFORMED_PACKET = 2027


class Error(Exception):
    """A server error (``errno``, ``sqlstate``, ``msg``) or one of ours."""

    def __init__(self, errno=None, msg='', sqlstate=None):
        super().__init__(errno, msg, sqlstate)
        self.errno, self.msg, self.sqlstate = errno, msg, sqlstate

    def __str__(self):
        if self.errno is None:
            return self.msg
        if self.sqlstate:
            return '%d (%s): %s' % (self.errno, self.sqlstate, self.msg)
        return '%d: %s' % (self.errno, self.msg)


class OperationalError(Error):
    """The connection failed (socket, timeout, protocol): it is closed."""


class NotSupported(Error):
    """An authentication method or a feature this client does not do."""


class ProgrammingError(Error):
    """A bad query template: placeholders and parameters do not match."""


# -- scrambles ---------------------------------------------------------------

def _sha(name):
    # The builtin modules import in ~0.2 ms, hashlib (OpenSSL) in ~4 ms.
    try:
        if name == 'sha1':
            from _sha1 import sha1 as fn
        else:
            from _sha256 import sha256 as fn
    except ImportError:
        import hashlib
        fn = getattr(hashlib, name)
    return lambda data: fn(data).digest()


def _xor(a, b):
    return (int.from_bytes(a, 'big') ^ int.from_bytes(b, 'big')).to_bytes(len(a), 'big')


def scramble_native(password, nonce):
    """mysql_native_password: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw)))."""
    if not password:
        return b''
    sha1 = _sha('sha1')
    stage1 = sha1(password.encode('utf-8'))
    return _xor(stage1, sha1(nonce + sha1(stage1)))


def scramble_caching_sha2(password, nonce):
    """caching_sha2_password: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)."""
    if not password:
        return b''
    sha256 = _sha('sha256')
    stage1 = sha256(password.encode('utf-8'))
    return _xor(stage1, sha256(sha256(stage1) + nonce))


_PLUGINS = {'mysql_native_password': scramble_native,
            'caching_sha2_password': scramble_caching_sha2}


# -- values --------------------------------------------------------------------

def read_lenenc(data, pos):
    """A length-encoded integer at data[pos]: (value, next pos); value None for 0xFB."""
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFB:
        return None, pos + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None or pos + 1 + size > len(data):
        raise OperationalError(CR_MALFORMED_PACKET, 'malformed packet (length-encoded integer)')
    return int.from_bytes(data[pos + 1:pos + 1 + size], 'little'), pos + 1 + size


def read_lenenc_bytes(data, pos):
    """A length-encoded string at data[pos]: (bytes or None, next pos)."""
    length, pos = read_lenenc(data, pos)
    if length is None:
        return None, pos
    if pos + length > len(data):
        raise OperationalError(CR_MALFORMED_PACKET, 'malformed packet (truncated string)')
    return data[pos:pos + length], pos + length


def literal(value):
    """A parameter as SQL text.  Strings and bytes go as hex literals, so no
    quoting, backslash or sql_mode (NO_BACKSLASH_ESCAPES...) can change them."""
    if value is None:
        return 'NULL'
    if isinstance(value, str):
        return "_utf8mb4 X'%s'" % value.encode('utf-8').hex() if value else "_utf8mb4''"
    if isinstance(value, bool):
        return '1' if value else '0'
    if isinstance(value, int):
        return '%d' % value                 # not str(): an IntEnum's would be its name
    if isinstance(value, float):
        if value - value != 0.0:            # inf - inf and nan - nan are nan
            raise ValueError('cannot send a non-finite float (%r) to MySQL' % value)
        text = float.__repr__(value)
        # An exponent makes it a DOUBLE literal (1.5 alone would be a DECIMAL one).
        return text if 'e' in text else text + 'e0'
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "X'%s'" % bytes(value).hex()
    raise TypeError('cannot send a %s to MySQL' % type(value).__name__)


def interpolate(sql, params=()):
    """sql with each %s replaced by the next parameter's literal and %% by %.

    Without parameters sql goes as it is (as with mysql.connector and PyMySQL),
    so ``WHERE host LIKE '%'`` needs no doubling there."""
    params = tuple(params) if params is not None else ()
    if not params:
        return sql
    out, start, used = [], 0, 0
    while True:
        at = sql.find('%', start)
        if at < 0:
            out.append(sql[start:])
            break
        out.append(sql[start:at])
        kind = sql[at + 1:at + 2]
        if kind == 's':
            if used == len(params):
                raise ProgrammingError(None, 'more placeholders than the %d parameters'
                                       % len(params))
            out.append(literal(params[used]))
            used += 1
        elif kind == '%':
            out.append('%')
        else:
            raise ProgrammingError(None, 'lone %% at offset %d (write %%%% for a %%)' % at)
        start = at + 2
    if used != len(params):
        raise ProgrammingError(None, '%d parameters for %d placeholders' % (len(params), used))
    return ''.join(out)


def _parse_err(packet):
    """An ERR packet (0xFF, errno, ['#' sqlstate], message) as an Error."""
    errno = int.from_bytes(packet[1:3], 'little')
    pos, sqlstate = 3, None
    if packet[3:4] == b'#':         # absent from errors sent before the handshake
        sqlstate, pos = packet[4:9].decode('ascii', 'replace'), 9
    msg = packet[pos:].decode('utf-8', 'replace')
    cls = OperationalError if errno in _GONE_ERRNOS else Error
    return cls(errno, msg, sqlstate)


# -- the connection --------------------------------------------------------------

class Connection:
    """One session; build it with :func:`connect`."""

    def __init__(self, sock, where='socket'):
        self._sock, self._where = sock, where
        self._rbuf = bytearray()
        self._seq = 0
        self.server_info = None
        self.connection_id = None

    def __repr__(self):
        state = 'open' if self._sock is not None else 'closed'
        return '<mysqlwire.Connection %s %s>' % (self._where, state)

    # Packets: 3 bytes of length, 1 byte of sequence id, the payload.

    def _lost(self, why):
        self._abandon()
        return OperationalError(CR_SERVER_LOST, 'Lost connection to MySQL server at %s (%s)'
                                % (self._where, why))

    def _abandon(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def _read(self, n):
        buf = self._rbuf
        while len(buf) < n:
            if self._sock is None:
                raise self._lost('closed')
            try:
                chunk = self._sock.recv(max(65536, n - len(buf)))
            except TimeoutError:
                raise self._lost('timed out') from None
            except OSError as e:
                raise self._lost(e.strerror or e.__class__.__name__) from None
            if not chunk:
                raise self._lost('the server closed the connection')
            buf += chunk
        data = bytes(buf[:n])
        del buf[:n]
        return data

    def _read_packet(self):
        payload = b''
        while True:
            header = self._read(4)
            if header[3] != self._seq:
                raise self._lost('packet sequence %d where %d was due' % (header[3], self._seq))
            self._seq = (self._seq + 1) & 0xFF
            length = int.from_bytes(header[:3], 'little')
            payload += self._read(length)
            if length < MAX_PACKET:
                return payload

    def _send_packet(self, payload):
        out = []
        while True:
            part, payload = payload[:MAX_PACKET], payload[MAX_PACKET:]
            out.append(len(part).to_bytes(3, 'little') + bytes((self._seq,)) + part)
            self._seq = (self._seq + 1) & 0xFF
            if len(part) < MAX_PACKET:      # an exact multiple ends with an empty packet
                break
        if self._sock is None:
            raise OperationalError(CR_SERVER_GONE, 'MySQL server has gone away (closed)')
        try:
            self._sock.sendall(b''.join(out))
        except TimeoutError:
            raise self._lost('timed out') from None
        except OSError as e:
            raise self._lost(e.strerror or e.__class__.__name__) from None

    # The handshake.

    def _handshake(self, user, password, database):
        packet = self._read_packet()
        if packet[:1] == b'\xff':
            raise _parse_err(packet)
        if packet[:1] != b'\x0a':
            raise NotSupported(None, 'handshake protocol %r (only 10)' % packet[:1])
        try:
            end = packet.index(b'\0', 1)
            self.server_info = packet[1:end].decode('utf-8', 'replace')
            pos = end + 1
            self.connection_id = int.from_bytes(packet[pos:pos + 4], 'little')
            nonce = packet[pos + 4:pos + 12]
            pos += 13                                       # and a filler byte
            caps = int.from_bytes(packet[pos:pos + 2], 'little')
            caps |= int.from_bytes(packet[pos + 5:pos + 7], 'little') << 16
            data_len = packet[pos + 7]
            pos += 18                                       # 10 reserved bytes
        except (ValueError, IndexError):
            raise self._lost('malformed handshake') from None
        if caps & _NEEDED != _NEEDED:
            raise NotSupported(None, 'server without protocol 4.1 secure plugin auth')
        # The nonce's second part: max(13, data_len - 8) bytes, the last a NUL.
        part2 = packet[pos:pos + max(13, data_len - 8)]
        pos += len(part2)
        nonce += part2[:-1] if part2.endswith(b'\0') else part2
        end = packet.find(b'\0', pos)
        plugin = packet[pos:end if end >= 0 else len(packet)].decode('ascii', 'replace')
        if plugin not in _PLUGINS:
            plugin = 'mysql_native_password'    # the server switches us if it wants another
        auth = _PLUGINS[plugin](password, nonce)

        flags = LONG_PASSWORD | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION | PLUGIN_AUTH
        if database:
            flags |= CONNECT_WITH_DB
        out = (flags.to_bytes(4, 'little') + (1 << 24).to_bytes(4, 'little')
               + bytes((UTF8MB4_GENERAL_CI,)) + bytes(23)
               + user.encode('utf-8') + b'\0' + bytes((len(auth),)) + auth)
        if database:
            out += database.encode('utf-8') + b'\0'
        self._send_packet(out + plugin.encode('ascii') + b'\0')

        while True:
            packet = self._read_packet()
            first = packet[:1]
            if first == b'\x00':
                return
            if first == b'\xff':
                raise _parse_err(packet)
            if first == b'\xfe':                # AuthSwitchRequest: plugin, NUL, nonce
                end = packet.find(b'\0', 1)
                if len(packet) == 1 or end < 0:
                    raise NotSupported(None, 'the server asks for the old (3.23) password hash')
                plugin = packet[1:end].decode('ascii', 'replace')
                if plugin not in _PLUGINS:
                    raise NotSupported(None, 'authentication plugin %r is not supported'
                                       % plugin)
                nonce = packet[end + 1:]
                if nonce.endswith(b'\0'):
                    nonce = nonce[:-1]
                self._send_packet(_PLUGINS[plugin](password, nonce))
            elif first == b'\x01' and plugin == 'caching_sha2_password':
                if packet[1:2] == b'\x03':      # fast authentication worked: OK follows
                    continue
                if packet[1:2] == b'\x04':
                    raise NotSupported(None, 'caching_sha2_password wants full '
                                       'authentication (TLS or RSA): not supported')
                raise self._lost('unexpected caching_sha2_password data')
            else:
                raise self._lost('unexpected packet 0x%02x during authentication'
                                 % packet[0] if packet else 'empty packet')

    # Queries.

    def _query(self, sql):
        """(affected rows, last insert id, description, rows) of one statement."""
        if self._sock is None:
            raise OperationalError(CR_SERVER_GONE, 'MySQL server has gone away (closed)')
        self._seq = 0
        self._send_packet(b'\x03' + sql.encode('utf-8'))
        try:
            return self._read_result()
        except OperationalError:
            self._abandon()
            raise
        except (IndexError, ValueError, UnicodeDecodeError) as e:
            raise self._lost('malformed result: %s' % e.__class__.__name__) from None

    def _read_result(self):
        packet = self._read_packet()
        first = packet[0]
        if first == 0x00:                       # OK: affected rows, insert id, status...
            affected, pos = read_lenenc(packet, 1)
            insert_id, pos = read_lenenc(packet, pos)
            return affected, insert_id, None, None
        if first == 0xFF:
            raise _parse_err(packet)
        if first == 0xFB:                       # LOAD DATA LOCAL: never sends a file
            raise self._lost('the server asked for a local file')
        count, _ = read_lenenc(packet, 0)
        description, converters = [], []
        for _ in range(count):
            packet = self._read_packet()
            pos = 0
            for _ in range(4):                  # catalog, schema, table, org_table
                _, pos = read_lenenc_bytes(packet, pos)
            name, pos = read_lenenc_bytes(packet, pos)
            _, pos = read_lenenc_bytes(packet, pos)     # org_name
            _, pos = read_lenenc(packet, pos)   # length of the fixed fields (0x0c)
            charset = int.from_bytes(packet[pos:pos + 2], 'little')
            ftype = packet[pos + 6]
            if ftype in _INT_TYPES:
                conv = int
            elif ftype in _FLOAT_TYPES:
                conv = float
            elif ftype in _BYTES_TYPES and charset == BINARY_CHARSET:
                conv = bytes
            else:
                conv = bytes.decode             # utf-8: the results are utf8mb4
            converters.append(conv)
            description.append((name.decode('utf-8'), ftype, None, None, None, None, None))
        self._read_eof()
        rows = []
        while True:
            packet = self._read_packet()
            if packet[0] == 0xFE and len(packet) < 9:
                if int.from_bytes(packet[3:5], 'little') & SERVER_MORE_RESULTS_EXISTS:
                    raise self._lost('more than one result set')
                return len(rows), None, description, rows
            if packet[0] == 0xFF:
                raise _parse_err(packet)        # the statement failed while sending rows
            row, pos = [], 0
            for conv in converters:
                first = packet[pos]
                if first < 0xFB:                # the usual short value, inline
                    value = packet[pos + 1:pos + 1 + first]
                    pos += 1 + first
                else:
                    value, pos = read_lenenc_bytes(packet, pos)
                row.append(None if value is None else conv(value))
            if pos != len(packet):
                raise self._lost('malformed row')
            rows.append(tuple(row))

    def _read_eof(self):
        packet = self._read_packet()
        if packet[:1] == b'\xff':
            raise _parse_err(packet)
        if packet[:1] != b'\xfe' or len(packet) >= 9:
            raise self._lost('no EOF after the column definitions')

    def cursor(self):
        return Cursor(self)

    def commit(self):
        self._query('COMMIT')

    def rollback(self):
        self._query('ROLLBACK')

    def close(self):
        """COM_QUIT and close; never raises."""
        if self._sock is not None:
            try:
                self._seq = 0
                self._send_packet(b'\x01')
            except Error:
                pass
            self._abandon()


class Cursor:
    """The rows of the last statement; no server-side cursor."""

    def __init__(self, connection):
        self.connection = connection
        self.rowcount, self.lastrowid, self.description = -1, None, None
        self._rows, self._next = [], 0

    def execute(self, sql, params=()):
        self.rowcount, self.lastrowid, self.description = -1, None, None
        self._rows, self._next = [], 0
        text = interpolate(sql, params)
        self.rowcount, self.lastrowid, self.description, rows = self.connection._query(text)
        self._rows = rows or []
        return self

    def fetchone(self):
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self):
        rows, self._next = self._rows[self._next:], len(self._rows)
        return rows

    def __iter__(self):
        return iter(self.fetchall())

    def close(self):
        self._rows = []


def connect(host, port=3306, user='root', password=None, database=None, timeout=30.0,
            autocommit=False):
    """A Connection over TCP; `timeout` (s) applies to connecting and to every read.

    The password is used for the scramble only: it is never kept, nor shown."""
    where = '%s:%d' % (host, port)
    try:
        # Bytes: for a str host getaddrinfo imports the idna codec, and with it re
        # and unicodedata (~15 ms).  Only a non-ASCII name needs that.
        name = host.encode('ascii') if host.isascii() else host.encode('idna')
        addresses = _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM)
    except OSError as e:
        raise OperationalError(CR_UNKNOWN_HOST, "Unknown MySQL server host '%s' (%s)"
                               % (host, e.strerror or e)) from None
    failure = None
    for family, kind, proto, _, address in addresses:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            break
        except OSError as e:
            sock.close()
            failure = 'timed out' if isinstance(e, TimeoutError) else e.strerror or str(e)
    else:
        raise OperationalError(CR_CONN_HOST_ERROR, "Can't connect to MySQL server on %s (%s)"
                               % (where, failure or 'no address'))
    conn = Connection(sock, where)
    try:
        conn._handshake(user, password, database)
        if not autocommit:
            conn._query('SET autocommit=0')
    except BaseException:
        conn._abandon()
        raise
    return conn
