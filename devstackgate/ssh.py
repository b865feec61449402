"""SSH to nodes with paramiko: wait for SSH, run commands, copy files, capture host keys.

A node's host key is captured on the first connection (during the ready check)
and stored with the node; every later connection pins it, and a changed key
is an error, never silently accepted.  No private key material is ever
printed or logged.
"""

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import shlex
import socket
import tarfile
import time

import paramiko

from devstackgate import wait
from devstackgate.errors import GateError

log = logging.getLogger('ssh')


class SSHError(GateError):
    reason = 'ssh'


class SSHTimeout(SSHError):
    """SSH never answered in time: the node has no working network."""
    reason = 'no-network'


class HostKeyMismatch(SSHError):
    reason = 'host-key'


class CommandTimeout(SSHError):
    reason = 'timeout'


def ensure_private_key(path):
    """Load the pool's private key, creating an RSA key at `path` if there is none.

    Returns (pkey, public_line).  The file is created 0600 and only its path
    is ever logged.
    """
    path = os.path.expanduser(path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        key = paramiko.RSAKey.generate(2048)
        # Written aside and linked into place, so concurrent first runs agree on one key.
        tmp = '%s.tmp-%d' % (path, os.getpid())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'w') as f:
            key.write_private_key(f)
        try:
            os.link(tmp, path)
            log.info('created SSH key %s', path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    try:
        key = paramiko.PKey.from_path(path)
    except (OSError, paramiko.SSHException) as e:
        raise SSHError('cannot load SSH private key %s: %s' % (path, type(e).__name__))
    public = public_line(key)
    if not os.path.exists(path + '.pub'):
        with open(path + '.pub', 'w') as f:
            f.write(public + '\n')
    return key, public


def public_line(key):
    """The authorized_keys line of our key."""
    return '%s %s devstack-gate' % (key.get_name(), key.get_base64())


def host_key_line(key):
    """'type base64' for a paramiko key, as stored with a node."""
    return '%s %s' % (key.get_name(), key.get_base64())


def fingerprint(key_line):
    """'SHA256:...' of a 'type base64' key line, as ssh-keygen -lf prints it."""
    blob = base64.b64decode(key_line.split()[1])
    return 'SHA256:' + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip('=')


class _Capture(paramiko.MissingHostKeyPolicy):
    """Accept the first key seen (it is recorded and pinned from then on)."""

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)


def connect(ip, port, username, pkey, timeout, host_key=None, host_key_types=None,
            sock=None):
    """An SSHClient logged in to ip:port; pins host_key ('type base64') when given.
    host_key_types: the only host-key algorithms to accept (a host offering several
    keys shows the one of these types), default any.  sock: a TCP connection to
    ip:port to use (answering() gives one), else a new one."""
    client = paramiko.SSHClient()
    if host_key:
        kind, _, body = host_key.partition(' ')
        try:
            key = paramiko.PKey.from_type_string(kind, base64.b64decode(body))
        except (ValueError, binascii.Error, paramiko.SSHException, paramiko.UnknownKeyType):
            raise HostKeyMismatch('%s: stored host key is not a valid %s key' % (ip, kind))
        host = ip if int(port) == 22 else '[%s]:%d' % (ip, int(port))
        client.get_host_keys().add(host, kind, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        client.set_missing_host_key_policy(_Capture())
    try:
        # Our own socket, so TCP_NODELAY can be set: without it back-to-back
        # commands each wait out Nagle's delay.
        if sock is None:
            sock = socket.create_connection((ip, int(port)), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        disabled = None
        if host_key_types:
            disabled = {'keys': [t for t in paramiko.Transport._preferred_keys
                                 if t not in host_key_types]}
        client.connect(ip, port=int(port), username=username, pkey=pkey, timeout=timeout,
                       banner_timeout=timeout, auth_timeout=timeout, allow_agent=False,
                       look_for_keys=False, sock=sock, disabled_algorithms=disabled)
    except paramiko.BadHostKeyException:
        client.close()
        raise HostKeyMismatch('%s:%s: host key changed since the node was checked; refusing'
                              % (ip, port))
    except paramiko.SSHException as e:
        client.close()
        if host_key and 'not found in known_hosts' in str(e):
            raise HostKeyMismatch('%s:%s: host key changed since the node was checked; refusing'
                                  % (ip, port))
        raise
    except BaseException:
        client.close()
        raise
    return client


def remote_host_key(client):
    return host_key_line(client.get_transport().get_remote_server_key())


class NoBanner(OSError):
    """The server at the other end has not begun an SSH identification."""


def answering(ip, port, timeout):
    """A TCP connection to ip:port whose server has begun its identification
    ('SSH-...') within `timeout` s: peeked at, not read, so the handshake on this
    same connection reads it.  A node that is not up yet costs one connect and no
    handshake; a node that is up, no second connection.  The first bytes the
    server sends must hold the identification or a line starting it (RFC 4253
    allows lines before it; OpenSSH sends none).  Raises OSError (NoBanner: it
    accepts but does not speak SSH)."""
    sock = socket.create_connection((ip, int(port)), timeout=timeout)
    try:
        sock.settimeout(timeout)
        first = sock.recv(1024, socket.MSG_PEEK)     # waits for the first bytes only
        if not first:
            raise NoBanner('closed before an SSH identification')
        if not (first.startswith(b'SSH-') or b'\nSSH-' in first):
            raise NoBanner('it does not speak SSH')
        return sock
    except BaseException:
        sock.close()
        raise


def wait_for_ssh(ip, port, username, pkey, deadline, connect_timeout=10.0, interval=2.0,
                 describe='', clock=time.monotonic, sleep=time.sleep, logins=None):
    """Connect until it works or `deadline` (a clock() value) passes.

    logins: a semaphore (context manager) each login attempt holds; when given,
    an attempt first connects and waits for the server's SSH banner without it
    (answering()), then logs in on that connection holding it, so nodes whose
    sshd is not up yet hold no login slot.
    Logs what it waits for and how long it has waited.  Raises SSHTimeout.
    """
    last_error = None

    def progress(waited):
        log.info('%swaiting for SSH on %s:%s, %.0f s so far (%s)',
                 describe, ip, port, waited, last_error)

    waited = 0.0
    try:
        for waited in wait.iterate(deadline, interval, 'SSH on %s:%s' % (ip, port), clock=clock,
                                   sleep=sleep, progress=progress):
            timeout = max(0.1, min(connect_timeout, deadline - clock()))
            sock = None
            if logins is not None:
                try:
                    sock = answering(ip, port, timeout)
                except OSError as e:
                    last_error = 'no SSH banner yet (%s)' % (
                        e if isinstance(e, NoBanner) else type(e).__name__)
                    continue
            try:
                with logins if logins is not None else contextlib.nullcontext():
                    return connect(ip, port, username, pkey, timeout=timeout, sock=sock)
            except HostKeyMismatch:
                raise
            except (OSError, socket.timeout, EOFError, paramiko.SSHException) as e:
                last_error = '%s: %s' % (type(e).__name__,
                                         str(e).splitlines()[0] if str(e) else '')
    except wait.Timeout:
        raise SSHTimeout('%sSSH to %s@%s:%s did not answer within %.0f s (%s)'
                         % (describe, username, ip, port, waited, last_error or 'no attempt'))


def run(client, command, timeout, on_line=None):
    """Run a command; return (exit_status, combined output).

    on_line(line) is called for each output line as it arrives (to stream a
    setup script to the console).  Raises CommandTimeout past `timeout` s.
    """
    chan = client.get_transport().open_session()
    chan.set_combine_stderr(True)
    chan.settimeout(1.0)
    chan.exec_command(command)
    deadline = time.monotonic() + timeout
    chunks, pending = [], b''
    try:
        while True:
            if time.monotonic() > deadline:
                raise CommandTimeout('command did not finish within %g s' % timeout)
            try:
                data = chan.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            chunks.append(data)
            if on_line:
                pending += data
                *lines, pending = pending.split(b'\n')
                for line in lines:
                    on_line(line.decode('utf-8', 'replace'))
        if on_line and pending:
            on_line(pending.decode('utf-8', 'replace'))
        status = chan.recv_exit_status()
    finally:
        chan.close()
    return status, b''.join(chunks).decode('utf-8', 'replace')


def put_file(client, local_path, remote_path, mode=0o755):
    """Copy one file to the node over SFTP (remote_path relative to the login's home)."""
    sftp = client.open_sftp()
    try:
        directory = os.path.dirname(remote_path)
        if directory:
            _sftp_makedirs(sftp, directory)
        sftp.put(local_path, remote_path)
        sftp.chmod(remote_path, mode)
    finally:
        sftp.close()


def _sftp_makedirs(sftp, directory):
    path = ''
    for part in directory.split('/'):
        path = part if not path else path + '/' + part
        if not part:
            path = '/'
            continue
        try:
            sftp.stat(path)
        except IOError:
            sftp.mkdir(path)


def put_tree(client, local_dir, remote_dir, timeout):
    """Copy a directory tree to the node, streamed as a tar archive into `tar -x` there."""
    chan = client.get_transport().open_session()
    chan.settimeout(timeout)
    chan.exec_command('mkdir -p %s && tar -C %s -xf -' % (shlex.quote(remote_dir),
                                                           shlex.quote(remote_dir)))
    stream = chan.makefile('wb')
    try:
        with tarfile.open(fileobj=stream, mode='w|') as tar:
            tar.add(local_dir, arcname='.')
        stream.flush()
        chan.shutdown_write()
        status = chan.recv_exit_status()
    finally:
        stream.close()
        chan.close()
    if status != 0:
        raise SSHError('copying %s to %s failed (tar exited %d)' % (local_dir, remote_dir, status))
