"""Real SSH endpoints for the local cloud: every ACTIVE server is a NodeHost.

A NodeHost listens on its own loopback address (127.x.y.z; Linux routes all
of 127.0.0.0/8 to lo, so any of them can be bound without root or setup) and
behaves enough like sshd for the product code and its tools to work
unchanged: public-key login for the users the "image" knows, ``exec``
through ``/bin/bash -c`` with the node's filesystem root as cwd and HOME (so
``rsync -e ssh`` works in both directions), and an SFTP subsystem rooted at
the same directory.

It is a test double, not a sandbox: commands run as the test's own Unix user
and can see the whole filesystem, exactly as they would through a real sshd.

Threads: one listener thread per started node; per connection paramiko's
transport thread; per running command two pump threads; per SFTP session
paramiko's handler thread.  ``stop()`` kills every process group a command
started and joins all of them, so hundreds of nodes can come and go inside
one test process.
"""

import base64
import fnmatch
import io
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
import weakref

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from paramiko.common import MSG_CHANNEL_REQUEST

LOG = logging.getLogger(__name__)

#: PATH given to commands (the sshd default on Debian/Ubuntu).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Environment variables a client may send (sshd's ``AcceptEnv LANG LC_*``).
ACCEPTED_ENV = ("LANG", "LC_*")
#: Seconds a connection may take from TCP accept to successful authentication
#: (sshd's LoginGraceTime); also bounds how long a silent client may linger.
LOGIN_GRACE_TIME = 30.0
#: Concurrent TCP connections per node, including held "no network" ones.
MAX_CONNECTIONS = 64
#: Concurrent sessions (running commands and SFTP sessions) per node.
MAX_SESSIONS = 32
#: How often the listener prunes dead connections and enforces the grace time,
#: and how often command pumps look for a vanished client (seconds).
HOUSEKEEPING_INTERVAL = 0.5
POLL_INTERVAL = 0.2
#: How long stop() waits, in total, for the node's threads to finish (seconds).
STOP_JOIN_TIMEOUT = 1.5
#: After a command was killed, how long to keep draining its output (seconds).
KILL_DRAIN_TIME = 0.5

#: The host key types a node offers, like a stock image's sshd (ssh-keygen
#: -A): the first is the primary key (``host_key``, ``host_key_line``).
HOST_KEY_TYPES = ("ecdsa-sha2-nistp256", "ssh-ed25519", "ssh-rsa")
#: Size of the RSA host key, made the first time a client asks for it.
RSA_HOST_KEY_BITS = 2048
#: The SSH host key algorithms an RSA host key answers to.
_RSA_ALGORITHMS = ("ssh-rsa", "rsa-sha2-256", "rsa-sha2-512")

_CHUNK = 32768
#: What paramiko raises when a channel is written after its client went away.
_CLIENT_GONE = (OSError, EOFError, paramiko.SSHException)


class NodeHost:
    """One SSH server on ``address:port`` serving the directory ``root``.

    ``users`` maps a username to its authorized public key lines, in
    authorized_keys format ("ssh-ed25519 AAAA... comment", options allowed).
    ``reachable=False`` models "ACTIVE but no network": TCP connections are
    accepted but the SSH banner is never sent, so clients time out waiting.
    A NodeHost is started once; after ``stop()`` make a new one (the host key
    can be passed on so a "rebooted" node keeps its identity).
    ``environment`` is a dict of extra variables every command gets (the
    client's accepted LANG/LC_* values still override them).

    Host keys: like a stock image's sshd, a node offers one key of each of
    HOST_KEY_TYPES, all its own.  ``host_key`` (a new ECDSA P-256 key unless
    given) is the primary one, the key ``host_key_line`` shows; the node
    makes one key of each other type to go with it (the RSA key only when a
    client first negotiates RSA or ``host_keys`` is read: a 2048-bit RSA key
    takes ~60 ms, which hundreds of nodes need not all pay).  A new NodeHost
    given the same ``host_key`` object (a reboot) offers those same keys
    again.  ``host_key`` may also be a list of keys: exactly the keys to
    offer, the primary first (``host_key=old.host_keys``; ``[key]`` for a
    node with one key).  Which key a client gets is the client's choice, the
    first of its host key algorithms that the node offers: paramiko and
    OpenSSH pick ssh-ed25519 unless they know a key of another type for the
    host already, so a client that pinned ``host_key_line`` still gets it.
    """

    def __init__(self, address, port, root, users, host_key=None,
                 reachable=True, command_timeout=3600.0, *,
                 login_grace_time=LOGIN_GRACE_TIME,
                 max_connections=MAX_CONNECTIONS,
                 max_sessions=MAX_SESSIONS, environment=None):
        self.address = address
        self.port = port
        self.root = os.path.abspath(root)
        self.reachable = reachable
        self.command_timeout = command_timeout
        self.login_grace_time = login_grace_time
        self.max_connections = max_connections
        self.max_sessions = max_sessions
        self.environment = dict(environment or {})
        if host_key is None:
            host_key = generate_host_key(HOST_KEY_TYPES[0])
        if isinstance(host_key, (list, tuple)):
            if not host_key:
                raise ValueError("host_key: an empty list of keys")
            host_key, *others = host_key
            self._identity = _HostIdentity.of(host_key, others)
        else:
            self._identity = _HostIdentity.of(host_key)
        self.host_key = host_key
        self.host_key_line = key_line(host_key)
        self._authorized = {user: _parse_authorized_keys(user, lines)
                            for user, lines in users.items()}

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = False
        self._stopped = False
        self._listener = None
        self._listen_thread = None
        self._silent = {}          # fd -> (socket, accepted at), unreachable
        self._transports = {}      # Transport -> accepted at (monotonic)
        self._threads = set()      # pump and SFTP threads to join on stop
        self._sessions = set()     # Channels running a command or SFTP
        self._groups = set()       # process group ids started by commands

    def __repr__(self):
        return "<NodeHost %s:%s root=%s>" % (self.address, self.port,
                                              self.root)

    @property
    def host_keys(self):
        """Every host key the node offers, the primary (``host_key``) first;
        makes the RSA key if no client has asked for it yet."""
        return [self.host_key] + self._identity.keys(materialize=True)

    @property
    def host_key_lines(self):
        """``host_keys`` as known_hosts lines ("type base64")."""
        return [key_line(key) for key in self.host_keys]

    @property
    def offered_key_lines(self):
        """The keys made so far as known_hosts lines, the primary first: every key a
        client has seen (the RSA key only once one asked for it; nothing is made)."""
        return [key_line(key) for key in
                [self.host_key] + self._identity.keys(materialize=False)]

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- lifecycle -----------------------------------------------------------

    def start(self):
        """Bind and listen, then serve in a daemon thread.

        The socket is listening when this returns, so the node is reachable
        at once (connections made now queue in the kernel backlog).  Raises
        OSError when the address cannot be bound (for example, in use).
        """
        with self._lock:
            if self._started or self._stopped:
                raise RuntimeError("%r was already started or stopped" % self)
            self._started = True
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Lets a replacement node rebind at once despite TIME_WAIT
            # connections; on Linux it still refuses a second live listener.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.address, self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._listen_thread = threading.Thread(
            target=self._serve, daemon=True,
            name="sshhost-%s:%s" % (self.address, self.port))
        self._listen_thread.start()
        LOG.debug("%r listening (reachable=%s)", self, self.reachable)

    def stop(self):
        """Close the listener and every connection, kill every process group
        started by a command, and wait for all threads.  Idempotent.  Leaves
        ``root`` in place (the cloud may snapshot it)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._stopping.set()
        deadline = time.monotonic() + STOP_JOIN_TIMEOUT
        if self._listener is not None:
            try:
                # Wakes the listener's poll(); closing an fd another thread is
                # polling would not, and could race with fd reuse.
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listen_thread.join(_remaining(deadline))
            self._listener.close()
        for sock, _ in self._silent.values():
            sock.close()
        self._silent.clear()

        with self._lock:
            groups = list(self._groups)
            transports = list(self._transports)
            self._transports.clear()
        for pgid in groups:
            _kill_group(pgid)
        for transport in transports:
            transport.close()
        for transport in transports:
            transport.join(_remaining(deadline))
        while True:
            with self._lock:
                alive = [t for t in self._threads if t.is_alive()]
                self._threads = set(alive)
            if not alive or time.monotonic() >= deadline:
                break
            alive[0].join(_remaining(deadline))
        if alive:
            LOG.warning("%r: %d threads still running after stop", self,
                        len(alive))
        LOG.debug("%r stopped", self)

    # -- listener thread -----------------------------------------------------

    def _serve(self):
        poller = select.poll()
        listen_fd = self._listener.fileno()
        poller.register(listen_fd, select.POLLIN)
        next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL
        while not self._stopping.is_set():
            events = poller.poll(HOUSEKEEPING_INTERVAL * 1000)
            if self._stopping.is_set():
                break
            for fd, _ in events:
                if fd == listen_fd:
                    self._accept(poller)
                else:
                    self._drain_silent(poller, fd)
            if time.monotonic() >= next_housekeeping:
                self._housekeeping(poller)
                next_housekeeping = time.monotonic() + HOUSEKEEPING_INTERVAL

    def _accept(self, poller):
        try:
            sock, peer = self._listener.accept()
        except OSError:
            return
        with self._lock:
            connections = len(self._transports) + len(self._silent)
        if connections >= self.max_connections:
            LOG.warning("%r: refusing %s:%s, %d connections open", self,
                        peer[0], peer[1], connections)
            sock.close()
            return
        if not self.reachable:
            # Hold the connection open and say nothing; read and discard what
            # the client sends so that we notice when it gives up.
            self._silent[sock.fileno()] = (sock, time.monotonic())
            poller.register(sock.fileno(), select.POLLIN)
            return
        # Without this, Nagle plus delayed ACKs add ~40 ms to every request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            transport = _Transport(sock)
            transport.add_server_key(self.host_key)
            self._identity.add_to(transport)
            transport.start_server(event=threading.Event(),
                                   server=_Server(self, peer))
        except Exception:  # a client that vanished during setup
            LOG.debug("%r: connection from %s failed to start", self, peer,
                      exc_info=True)
            sock.close()
            return
        with self._lock:
            self._transports[transport] = time.monotonic()

    def _drain_silent(self, poller, fd):
        sock, _ = self._silent[fd]
        try:
            data = sock.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            poller.unregister(fd)
            del self._silent[fd]
            sock.close()

    def _housekeeping(self, poller):
        """Drop finished connections, close ones past the login grace time,
        forget empty process groups and finished threads."""
        now = time.monotonic()
        for fd, (sock, since) in list(self._silent.items()):
            if now - since > self.login_grace_time:
                poller.unregister(fd)
                del self._silent[fd]
                sock.close()
        with self._lock:
            transports = list(self._transports.items())
        for transport, since in transports:
            if transport.is_active():
                if (not transport.is_authenticated()
                        and now - since > self.login_grace_time):
                    LOG.info("%r: closing %s, no login within %ss", self,
                             transport.getpeername(), self.login_grace_time)
                    transport.close()   # forgotten at the next round
            elif not transport.is_alive():
                with self._lock:
                    self._transports.pop(transport, None)
        with self._lock:
            self._threads = {t for t in self._threads if t.is_alive()}
            self._groups = {g for g in self._groups if _group_alive(g)}

    # -- called from paramiko's transport threads ---------------------------

    def _is_authorized(self, username, key):
        if key.asbytes() in self._authorized.get(username, ()):
            return True
        # Like sshd, keys added later to ~/.ssh/authorized_keys (the login's
        # home is the node's root) are accepted too.
        try:
            with open(os.path.join(self.root, ".ssh", "authorized_keys")) as f:
                lines = f.read().splitlines()
        except OSError:
            return False
        try:
            return key.asbytes() in _parse_authorized_keys(username, lines)
        except ValueError:
            return False

    def _open_session(self, channel):
        """Count ``channel`` as a session; False when the node is full or
        stopping, or the channel already runs something (one exec, shell or
        subsystem per channel, as in RFC 4254)."""
        with self._lock:
            if self._stopping.is_set() or channel in self._sessions:
                return False
            self._sessions = {c for c in self._sessions if not c.closed}
            if len(self._sessions) >= self.max_sessions:
                LOG.warning("%r: refusing session, %d open", self,
                            len(self._sessions))
                return False
            self._sessions.add(channel)
            return True

    def _spawn(self, channel, argv, env):
        """Start ``argv`` for ``channel``; returns a _Command whose pump
        threads are not running yet (see _Transport), or None."""
        with self._lock:
            if self._stopping.is_set():
                return None
            try:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, cwd=self.root, env=env,
                    start_new_session=True, bufsize=0)
            except OSError as e:
                LOG.warning("%r: cannot start %s: %s", self, argv[0], e)
                return None
            # With start_new_session the child is its own group leader.
            self._groups.add(proc.pid)
        # The command line itself is not logged: it may carry secrets.
        LOG.debug("%r: command for %s runs as pid %d", self, env["USER"],
                  proc.pid)
        return _Command(self, channel, proc)

    def _start_pumps(self, command):
        with self._lock:
            if not self._stopping.is_set():
                self._threads.update(command.threads)
                for thread in command.threads:
                    thread.start()
                return
        # stop() has begun and may have joined our threads already: finish
        # the command here, in the transport thread.
        command.abandon()

    def _start_subsystem_thread(self, thread):
        with self._lock:
            if self._stopping.is_set():
                return False
            self._threads.add(thread)
        thread.start()
        return True


class _Server(paramiko.ServerInterface):
    """Per-connection policy: public keys only, session channels only."""

    def __init__(self, node, peer):
        self.node = node
        self.peer = peer
        self.env = {}       # Channel -> {name: value} sent by the client
        self.pending = {}   # Channel -> _Command accepted, not yet pumping

    def get_allowed_auths(self, username):
        return "publickey"

    def check_auth_publickey(self, username, key):
        if self.node._is_authorized(username, key):
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind, chanid):
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_env_request(self, channel, name, value):
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if not any(fnmatch.fnmatchcase(name, p) for p in ACCEPTED_ENV):
            return False
        self.env.setdefault(channel, {})[name] = value
        return True

    def check_channel_pty_request(self, channel, term, width, height,
                                  pixelwidth, pixelheight, modes):
        return True     # accepted and ignored: commands never get a terminal

    def check_channel_window_change_request(self, channel, width, height,
                                            pixelwidth, pixelheight):
        return True

    def check_channel_exec_request(self, channel, command):
        return self._run(channel, [b"/bin/bash", b"-c", command])

    def check_channel_shell_request(self, channel):
        # No terminal: bash reads commands from the channel, which is what
        # "ssh node < script.sh" needs.
        return self._run(channel, ["/bin/bash", "-l"])

    def check_channel_subsystem_request(self, channel, name):
        if name != "sftp" or not self.node._open_session(channel):
            return False
        return self.node._start_subsystem_thread(
            paramiko.SFTPServer(channel, name, self, _RootedSFTP))

    def _run(self, channel, argv):
        if not self.node._open_session(channel):
            return False
        command = self.node._spawn(channel, argv, self._environment(channel))
        if command is None:
            return False
        self.pending[channel] = command
        return True

    def start_pending(self, channel):
        command = self.pending.pop(channel, None)
        if command is not None:
            self.node._start_pumps(command)

    def _environment(self, channel):
        node = self.node
        user = channel.get_transport().get_username()
        env = {
            "HOME": node.root, "USER": user, "LOGNAME": user,
            "PATH": DEFAULT_PATH, "SHELL": "/bin/bash", "LANG": "C.UTF-8",
            "SSH_CLIENT": "%s %s %s" % (self.peer[0], self.peer[1], node.port),
            "SSH_CONNECTION": "%s %s %s %s" % (self.peer[0], self.peer[1],
                                               node.address, node.port),
        }
        env.update(node.environment)
        for name, value in self.env.pop(channel, {}).items():
            env[name] = value.decode("utf-8", "replace") \
                if isinstance(value, bytes) else value
        return env


class _Transport(paramiko.Transport):
    """A server Transport that lets a command talk only after paramiko has
    answered the exec (or shell) request that started it.

    paramiko sends CHANNEL_SUCCESS after check_channel_exec_request returns.
    A command that finished before that would get its data, exit status and
    CHANNEL_CLOSE out first, and clients then fail with "Channel closed"
    (seen with "echo hi" under load).  sshd is single-threaded and never
    does this.  The hook is paramiko's per-message channel handler table, a
    private name: test_instant_commands_get_their_reply_before_close fails
    if a paramiko upgrade breaks it.
    """

    def _handle_channel_request(chan, m):
        try:
            paramiko.Channel._handle_request(chan, m)
        finally:
            server = chan.get_transport().server_object
            if isinstance(server, _Server):
                server.start_pending(chan)

    _channel_handler_table = dict(
        paramiko.Transport._channel_handler_table)
    _channel_handler_table[MSG_CHANNEL_REQUEST] = _handle_channel_request
    del _handle_channel_request

    def get_server_key(self):
        """The negotiated host key; a key not made yet (_LazyKey, the RSA
        one) is made now, for this node once and for all."""
        key = super().get_server_key()
        if isinstance(key, _LazyKey):
            key = key.resolve()
            self.add_server_key(key)
        return key


class _LazyKey:
    """Stands in a Transport's host keys for a key made on first use."""

    def __init__(self, identity, key_type):
        self.identity = identity
        self.key_type = key_type

    def resolve(self):
        return self.identity.key(self.key_type)


class _HostIdentity:
    """The host keys a node offers besides its primary one.

    ``keys`` are made already; ``lazy`` are key types made on first use
    (once: a node keeps them).  ``of(primary)`` is the identity that goes
    with a primary key object, the same one each time, so a NodeHost made
    with an earlier node's ``host_key`` offers the same keys;
    ``of(primary, others)`` makes ``others`` the identity of ``primary``
    from then on.  The registry holds no reference to the primary key and
    forgets it with the key.
    """

    _by_primary = {}        # id(primary key) -> _HostIdentity
    _registry_lock = threading.Lock()

    def __init__(self, keys, lazy):
        self._lock = threading.Lock()           # guards _keys and _lazy
        self._make_lock = threading.Lock()      # one key generation at a time
        self._keys = {_key_type(k): k for k in keys}
        self._lazy = [t for t in lazy if t not in self._keys]

    @classmethod
    def of(cls, primary, others=None):
        if others is not None:
            types = [_key_type(k) for k in [primary] + list(others)]
            if len(set(types)) < len(types):
                raise ValueError("host_key: more than one key of a type (%s)"
                                 % ", ".join(types))
            identity = cls(others, ())
        with cls._registry_lock:
            known = cls._by_primary.get(id(primary))
            if others is None:
                if known is not None:
                    return known
                types = [t for t in HOST_KEY_TYPES if t != _key_type(primary)]
                identity = cls([generate_host_key(t) for t in types
                                if t != "ssh-rsa"],
                               [t for t in types if t == "ssh-rsa"])
            cls._by_primary[id(primary)] = identity
            if known is None:
                weakref.finalize(primary, cls._forget, id(primary)).atexit = \
                    False
            return identity

    @classmethod
    def _forget(cls, primary_id):
        # Called from the garbage collector, maybe inside of() in this very
        # thread: no lock (a dict pop is atomic; of()'s own key is alive).
        cls._by_primary.pop(primary_id, None)

    def key(self, key_type):
        """The key of ``key_type``, made now if it is not yet.  New
        connections are not held up meanwhile (they offer it as lazy)."""
        with self._lock:
            key = self._keys.get(key_type)
        if key is not None:
            return key
        with self._make_lock:
            with self._lock:
                key = self._keys.get(key_type)
            if key is None:
                key = generate_host_key(key_type)
                with self._lock:
                    self._keys[key_type] = key
                    if key_type in self._lazy:
                        self._lazy.remove(key_type)
        return key

    def keys(self, materialize=False):
        if materialize:
            for key_type in list(self._lazy):
                self.key(key_type)
        with self._lock:
            return list(self._keys.values())

    def add_to(self, transport):
        with self._lock:
            keys, lazy = list(self._keys.values()), list(self._lazy)
        for key in keys:
            transport.add_server_key(key)
        for key_type in lazy:
            placeholder = _LazyKey(self, key_type)
            names = _RSA_ALGORITHMS if key_type == "ssh-rsa" else (key_type,)
            for name in names:      # as add_server_key() would list it
                transport.server_key_dict[name] = placeholder


def generate_host_key(key_type):
    """A new paramiko host key of ``key_type`` (one of HOST_KEY_TYPES)."""
    if key_type == "ecdsa-sha2-nistp256":
        return paramiko.ECDSAKey.generate(bits=256)
    if key_type == "ssh-rsa":
        return paramiko.RSAKey.generate(RSA_HOST_KEY_BITS)
    if key_type == "ssh-ed25519":
        # paramiko cannot generate Ed25519 keys; it reads OpenSSH's format.
        pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption())
        return paramiko.Ed25519Key(file_obj=io.StringIO(pem.decode()))
    raise ValueError("unknown host key type %r" % (key_type,))


def key_line(key):
    """A key as in known_hosts: "ecdsa-sha2-nistp256 AAAA..."."""
    return "%s %s" % (key.get_name(), key.get_base64())


def _key_type(key):
    name = key.get_name()
    return "ssh-rsa" if name in _RSA_ALGORITHMS else name


class _Command:
    """Connects one running process to one channel.

    The stdin thread copies channel -> process until the client's EOF.  The
    output thread copies stdout and stderr -> channel, sends EOF when both are
    closed, waits for the process and sends its exit status, then closes the
    channel.  It kills the whole process group when the client goes away, the
    node stops or the command runs past ``command_timeout`` (the client then
    gets the killed command's status, 137 for bash).  The process is always
    reaped here, so no zombies remain.
    """

    def __init__(self, node, channel, proc):
        self.node = node
        self.channel = channel
        self.proc = proc
        name = "sshhost-cmd-%d" % proc.pid
        self.threads = (
            threading.Thread(target=self._feed_stdin, name=name + "-in",
                             daemon=True),
            threading.Thread(target=self._pump_output, name=name + "-out",
                             daemon=True),
        )

    def abandon(self):
        """Kill, reap and close without pumping (the node is stopping)."""
        self._kill("node stopping")
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            pipe.close()
        _quietly(self.channel.close)

    def _kill(self, why):
        LOG.debug("%r: killing command %d (%s)", self.node, self.proc.pid, why)
        _kill_group(self.proc.pid)

    def _feed_stdin(self):
        fd = self.proc.stdin.fileno()
        try:
            while True:
                data = self.channel.recv(_CHUNK)
                if not data:    # client EOF, or channel closed
                    break
                _write_all(fd, data)
        except OSError:         # the process closed its stdin or exited
            pass
        finally:
            self.proc.stdin.close()

    def _pump_output(self):
        channel, proc = self.channel, self.proc
        deadline = time.monotonic() + self.node.command_timeout
        killed_at = None
        gone = False    # client or node gone: nothing more to send
        poller = select.poll()
        senders = {proc.stdout.fileno(): channel.sendall,
                   proc.stderr.fileno(): channel.sendall_stderr}
        for fd in senders:
            poller.register(fd, select.POLLIN)
        try:
            while senders:
                if killed_at is None:
                    reason = self._kill_reason(deadline)
                    if reason:
                        self._kill(reason)
                        killed_at = time.monotonic()
                        gone = reason != "timeout"
                elif time.monotonic() - killed_at > KILL_DRAIN_TIME:
                    break   # something outside the group holds the pipes
                for fd, _ in poller.poll(POLL_INTERVAL * 1000):
                    data = os.read(fd, _CHUNK)
                    if not data:
                        poller.unregister(fd)
                        del senders[fd]
                    elif not gone:
                        try:
                            senders[fd](data)
                        except _CLIENT_GONE:
                            self._kill("client gone")
                            killed_at = time.monotonic()
                            gone = True
            if not gone:
                # EOF as soon as the output ends, like sshd.
                _quietly(channel.shutdown_write)
            code = self._wait(deadline, killed_at is not None)
            if not gone and not channel.closed:
                # A signal n is reported as 128+n, the way bash reports it.
                _quietly(channel.send_exit_status,
                         128 - code if code < 0 else code)
        except Exception:
            LOG.exception("%r: command %d pump failed", self.node, proc.pid)
            self._kill("pump failed")
            proc.wait()
        finally:
            proc.stdout.close()
            proc.stderr.close()
            _quietly(channel.close)     # also wakes the stdin thread

    def _kill_reason(self, deadline):
        if self.channel.closed:
            return "client gone"
        if self.node._stopping.is_set():
            return "node stopping"
        if time.monotonic() > deadline:
            return "timeout"
        return None

    def _wait(self, deadline, killed):
        """Reap the process; its output may have closed before it exited, so
        keep honouring disconnect, stop and timeout meanwhile."""
        while True:
            try:
                return self.proc.wait(POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                pass
            reason = None if killed else self._kill_reason(deadline)
            if reason:
                self._kill(reason)
                killed = True


class _RootedSFTP(paramiko.SFTPServerInterface):
    """SFTP on the node's filesystem.  Relative paths resolve against the
    node's root (the cwd of commands), absolute ones are used as given, as a
    real sshd without chroot would."""

    def __init__(self, server, *args, **kwargs):
        super().__init__(server, *args, **kwargs)
        self.root = server.node.root

    def _path(self, path):
        return os.path.join(self.root, path)

    def canonicalize(self, path):
        return os.path.normpath(self._path(path))

    def open(self, path, flags, attr):
        path = self._path(path)
        mode = getattr(attr, "st_mode", None)
        try:
            fd = os.open(path, flags, 0o666 if mode is None else mode & 0o7777)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        if flags & os.O_CREAT and attr is not None:
            attr._flags &= ~attr.FLAG_PERMISSIONS   # already applied above
            paramiko.SFTPServer.set_file_attr(path, attr)
        append = "a" if flags & os.O_APPEND else ""
        if flags & os.O_WRONLY:
            fmode = (append or "w") + "b"
        elif flags & os.O_RDWR:
            fmode = (append + "+b") if append else "r+b"
        else:
            fmode = "rb"
        handle = _SFTPHandle(flags)
        handle.filename = path
        handle.readfile = handle.writefile = os.fdopen(fd, fmode)
        return handle

    def list_folder(self, path):
        path = self._path(path)
        try:
            result = []
            for name in os.listdir(path):
                attr = paramiko.SFTPAttributes.from_stat(
                    os.lstat(os.path.join(path, name)))
                attr.filename = name
                result.append(attr)
            return result
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def stat(self, path):
        return self._call(lambda: paramiko.SFTPAttributes.from_stat(
            os.stat(self._path(path))))

    def lstat(self, path):
        return self._call(lambda: paramiko.SFTPAttributes.from_stat(
            os.lstat(self._path(path))))

    def remove(self, path):
        return self._call(os.remove, self._path(path))

    def rename(self, oldpath, newpath):
        return self._call(os.rename, self._path(oldpath), self._path(newpath))

    def posix_rename(self, oldpath, newpath):
        return self.rename(oldpath, newpath)

    def mkdir(self, path, attr):
        path = self._path(path)
        mode = getattr(attr, "st_mode", None)
        result = self._call(os.mkdir, path,
                            0o777 if mode is None else mode & 0o7777)
        if result == paramiko.SFTP_OK and attr is not None:
            attr._flags &= ~attr.FLAG_PERMISSIONS
            return self._call(paramiko.SFTPServer.set_file_attr, path, attr)
        return result

    def rmdir(self, path):
        return self._call(os.rmdir, self._path(path))

    def chattr(self, path, attr):
        return self._call(paramiko.SFTPServer.set_file_attr,
                          self._path(path), attr)

    def readlink(self, path):
        return self._call(os.readlink, self._path(path))

    def symlink(self, target_path, path):
        return self._call(os.symlink, target_path, self._path(path))

    @staticmethod
    def _call(func, *args):
        try:
            result = func(*args)
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)
        return paramiko.SFTP_OK if result is None else result


class _SFTPHandle(paramiko.SFTPHandle):
    def stat(self):
        try:
            return paramiko.SFTPAttributes.from_stat(
                os.fstat(self.readfile.fileno()))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    def chattr(self, attr):
        try:
            paramiko.SFTPServer.set_file_attr(self.filename, attr)
            return paramiko.SFTP_OK
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)


def _parse_authorized_keys(user, lines):
    """Key blobs from authorized_keys lines; options before the key type and
    a comment after it are allowed.  Raises ValueError naming the user."""
    blobs = set()
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        for keytype, data in zip(tokens, tokens[1:]):
            try:
                blob = base64.b64decode(data, validate=True)
            except ValueError:
                continue
            # A key blob starts with its own type as an SSH string.
            name = keytype.encode()
            if blob[:4 + len(name)] == len(name).to_bytes(4, "big") + name:
                blobs.add(blob)
                break
        else:
            raise ValueError("user %r: not a public key line: %.40r..."
                             % (user, line))
    return frozenset(blobs)


def _quietly(func, *args):
    """Call a channel method that fails if the client has just gone."""
    try:
        func(*args)
    except _CLIENT_GONE:
        pass


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _remaining(deadline):
    return max(0.0, deadline - time.monotonic())
