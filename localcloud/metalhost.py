"""Loopback "bare-metal hosts": static machines that are reset, not deleted.

A bare-metal provider hands out machines that exist before and after a gate
run.  Instead of deleting one, the pool resets it: on the real machine the
operator's reset command (seed 003) merges away the LVM copy-on-write
snapshot taken of the pristine root, schedules a kexec into the pristine
kernel and returns at once; a couple of seconds later (``sleep 2``, so the
SSH session that asked can log out) the machine kexecs, every connection
and process dies, and it boots back into exactly the pristine root with the
same SSH host key.

A MetalHost models that on a loopback address with a NodeHost (see
sshhost.py) serving ``root``:

* ``start()`` (re)creates ``root`` as a copy of the directory ``pristine``
  and starts the SSH endpoint;
* every command gets ``DG_METALHOST_RESET``, the path of a trigger file in
  ``control_dir`` (outside root, like the machine's reset machinery is
  outside the snapshot); ``reset_command``, ``touch "$DG_METALHOST_RESET"``,
  is what an operator configures as the host's reset command and, like the
  real one, returns at once;
* a watcher thread notices the trigger (or ``reset()``) and resets: after
  ``reset_delay`` it stops the NodeHost (all connections and processes die,
  as with kexec), restores ``root`` from ``pristine`` (anything a gate run
  left is gone), keeps the endpoint refusing connections for
  ``down_seconds`` and starts a new NodeHost on the same address and port
  with the same host key and users.  With ``never_return`` set the host
  stays 'down': a machine that never came back.

States: 'up', 'resetting' (from the request until the host answers again,
including the down window), 'down' (did not come back) and 'stopped'
(before ``start()`` and after ``stop()``).
"""

import errno
import logging
import os
import shutil
import stat
import threading
import time

import paramiko

from localcloud.sshhost import NodeHost

LOG = logging.getLogger(__name__)

#: The variable naming the reset trigger file in every command's environment.
RESET_ENV = "DG_METALHOST_RESET"
#: Name of the trigger file inside the control directory.
TRIGGER_NAME = "reset"
#: How often the watcher looks for the trigger file (seconds).
TRIGGER_POLL_INTERVAL = 0.05
#: How long a coming-back host retries binding a briefly busy port (seconds).
BIND_RETRY_SECONDS = 2.0
#: Pause between two bind attempts (seconds).
BIND_RETRY_INTERVAL = 0.1
#: How long stop() waits for the watcher thread (it may be stopping the
#: NodeHost, which itself waits up to sshhost.STOP_JOIN_TIMEOUT).
STOP_JOIN_TIMEOUT = 5.0

STATES = ("up", "resetting", "down", "stopped")


class MetalHost:
    """One static machine on ``address:port`` whose root is ``root``.

    ``users`` is as for NodeHost (username -> authorized key lines).  The
    host key is generated unless given and is the same across resets.  A
    MetalHost is started once; after ``stop()`` make a new one.  ``stop()``
    leaves ``root`` and ``control_dir`` in place.
    """

    def __init__(self, name, address, port, root, pristine, users,
                 host_key=None, reset_delay=0.5, down_seconds=0.5,
                 never_return=False, control_dir=None):
        self.name = name
        self.address = address
        self.port = port
        self.root = os.path.abspath(root)
        self.pristine = os.path.abspath(pristine)
        self.users = {user: list(lines) for user, lines in users.items()}
        if host_key is None:
            host_key = paramiko.ECDSAKey.generate(bits=256)
        self.host_key = host_key
        self.reset_delay = reset_delay
        self.down_seconds = down_seconds
        #: May be set at any time before a reset: the host then never returns.
        self.never_return = never_return
        self.control_dir = os.path.abspath(
            control_dir if control_dir is not None else self.root + ".control")
        if _inside(self.control_dir, self.root):
            raise ValueError("%s: control_dir %s is inside root %s"
                             % (name, self.control_dir, self.root))
        self.trigger_path = os.path.join(self.control_dir, TRIGGER_NAME)

        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._wake = threading.Event()     # reset() or stop(): look now
        self._started = False
        self._state = "stopped"
        self._resets = 0
        self._node = None
        self._watcher = None

    def __repr__(self):
        return "<MetalHost %s %s:%s %s>" % (self.name, self.address,
                                             self.port, self._state)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- properties ----------------------------------------------------------

    @property
    def host_key_line(self):
        """The host key as in known_hosts: "ecdsa-sha2-nistp256 AAAA..."."""
        return "%s %s" % (self.host_key.get_name(), self.host_key.get_base64())

    @property
    def offered_key_lines(self):
        """Every host key made so far (NodeHost.offered_key_lines), the primary first;
        the same across resets."""
        node = self._node
        return node.offered_key_lines if node is not None else [self.host_key_line]

    @property
    def reset_command(self):
        """The shell command an operator configures to reset this host; it
        returns at once, the reset follows ``reset_delay`` later."""
        return 'touch "$%s"' % RESET_ENV

    @property
    def state(self):
        with self._cond:
            return self._state

    @property
    def resets(self):
        """How many times ``root`` was restored from ``pristine``."""
        with self._cond:
            return self._resets

    # -- lifecycle -----------------------------------------------------------

    def start(self):
        """Copy ``pristine`` to ``root``, start the SSH endpoint (listening
        when this returns) and the watcher.  Raises OSError when the address
        cannot be bound."""
        with self._cond:
            if self._started or self._stopping.is_set():
                raise RuntimeError("%r was already started or stopped" % self)
            self._started = True
        self._restore()
        _remove(self.trigger_path)      # a stale request from an earlier run
        node = self._make_node()
        try:
            node.start()
        except OSError:
            node.stop()
            raise
        with self._cond:
            self._node = node
            self._set_state("up")
        self._watcher = threading.Thread(
            target=self._watch, daemon=True, name="metalhost-%s" % self.name)
        self._watcher.start()
        LOG.debug("%r started", self)

    def stop(self):
        """Stop the watcher (abandoning a reset in progress) and the SSH
        endpoint.  Idempotent."""
        with self._cond:
            if self._stopping.is_set():
                return
            self._stopping.set()
            self._set_state("stopped")
        self._wake.set()
        if self._watcher is not None:
            self._watcher.join(STOP_JOIN_TIMEOUT)
            if self._watcher.is_alive():
                LOG.info("%r: watcher still running after %ss", self,
                         STOP_JOIN_TIMEOUT)
        with self._cond:
            node, self._node = self._node, None
        if node is not None:
            node.stop()
        LOG.debug("%r stopped", self)

    def reset(self):
        """Reset the host as its reset command would (asynchronously).
        Returns False when a reset is already under way or the host is down.
        """
        with self._cond:
            if self._state == "stopped":
                raise RuntimeError("%r is not running" % self)
            if self._state != "up":
                return False
            self._set_state("resetting")
        self._wake.set()
        return True

    def wait_for_state(self, *states, timeout):
        """Wait until the state is one of ``states``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._state in states,
                                       timeout)

    # -- internals -----------------------------------------------------------

    def _set_state(self, state):
        """Caller holds self._cond.  After stop() only 'stopped' sticks."""
        assert state in STATES
        if self._stopping.is_set() and state != "stopped":
            return
        if state != self._state:
            LOG.debug("%r -> %s", self, state)
        self._state = state
        self._cond.notify_all()

    def _make_node(self):
        return NodeHost(self.address, self.port, self.root, self.users,
                        host_key=self.host_key,
                        environment={RESET_ENV: self.trigger_path})

    def _watch(self):
        while not self._stopping.is_set():
            self._wake.wait(TRIGGER_POLL_INTERVAL)
            self._wake.clear()
            with self._cond:
                if self._stopping.is_set():
                    return
                if self._state == "up" and os.path.exists(self.trigger_path):
                    self._set_state("resetting")
                resetting = self._state == "resetting"
            if resetting:
                try:
                    self._reset()
                except Exception:
                    LOG.info("%r: reset failed, host down", self,
                             exc_info=True)
                    with self._cond:
                        self._set_state("down")

    def _reset(self):
        _remove(self.trigger_path)
        LOG.info("%r: reset requested, going down in %ss", self,
                 self.reset_delay)
        # Lets the session that asked log out, like the real script's sleep.
        if self._stopping.wait(self.reset_delay):
            return
        with self._cond:
            node, self._node = self._node, None
        if node is not None:
            node.stop()     # kexec: every connection and process dies
        if self._stopping.is_set():
            return
        self._restore()
        with self._cond:
            self._resets += 1
            self._cond.notify_all()
        if self._stopping.wait(self.down_seconds):
            return
        # A trigger raised by the dead session meanwhile went with it.
        _remove(self.trigger_path)
        if self.never_return:
            LOG.info("%r: never came back after reset", self)
            with self._cond:
                self._set_state("down")
            return
        node = self._start_node()
        if node is None:
            with self._cond:
                self._set_state("down")
            return
        with self._cond:
            if not self._stopping.is_set():
                self._node, node = node, None
                self._set_state("up")
        if node is not None:    # stop() came meanwhile
            node.stop()
            return
        LOG.info("%r: back after reset %d", self, self.resets)

    def _start_node(self):
        """A started NodeHost on our endpoint, retrying a busy port for
        BIND_RETRY_SECONDS; None (reason logged) if it cannot be had."""
        deadline = time.monotonic() + BIND_RETRY_SECONDS
        while True:
            node = self._make_node()
            try:
                node.start()
                return node
            except OSError as e:
                node.stop()
                if e.errno != errno.EADDRINUSE:
                    LOG.info("%r: cannot listen (%s), host down", self, e)
                    return None
                if time.monotonic() >= deadline:
                    LOG.info("%r: port still busy after %ss (%s), host down",
                             self, BIND_RETRY_SECONDS, e)
                    return None
                LOG.debug("%r: port busy, retrying: %s", self, e)
            if self._stopping.wait(BIND_RETRY_INTERVAL):
                return None

    def _restore(self):
        """Make ``root`` an exact copy of ``pristine`` (modes, times,
        symlinks) and make sure the control directory exists."""
        os.makedirs(self.control_dir, exist_ok=True)
        if os.path.isdir(self.root) and not os.path.islink(self.root):
            _clear_dir(self.root)
        shutil.copytree(self.pristine, self.root, symlinks=True,
                        dirs_exist_ok=True)
        LOG.debug("%r: root restored from %s", self, self.pristine)


class MetalHosts:
    """Several MetalHosts from a list of dicts of MetalHost arguments (name,
    address, port, root, pristine, ...); ``defaults`` fill in what a dict
    leaves out (``users`` for example).  Started and stopped together;
    ``hosts[name]`` gives one."""

    def __init__(self, specs, **defaults):
        self.hosts = [MetalHost(**dict(defaults, **spec)) for spec in specs]
        self._by_name = {host.name: host for host in self.hosts}
        if len(self._by_name) != len(self.hosts):
            raise ValueError("duplicate host names")

    def __getitem__(self, name):
        return self._by_name[name]

    def __iter__(self):
        return iter(self.hosts)

    def __len__(self):
        return len(self.hosts)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        """Start every host; on a failure stop those started and re-raise."""
        try:
            for host in self.hosts:
                host.start()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        for host in self.hosts:
            host.stop()


def _inside(path, directory):
    return path == directory or path.startswith(directory.rstrip(os.sep)
                                                + os.sep)


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _clear_dir(path):
    """Remove everything inside ``path``, even read-only directories a gate
    run left behind; ``path`` itself stays."""
    _make_writable(path)
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            sub = os.path.join(dirpath, name)
            if not os.path.islink(sub):
                _make_writable(sub)     # before os.walk descends into it
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _make_writable(directory):
    mode = os.lstat(directory).st_mode
    if mode & stat.S_IRWXU != stat.S_IRWXU:
        os.chmod(directory, mode | stat.S_IRWXU)
