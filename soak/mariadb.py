"""A private MariaDB server for the long soak, as dev.sh starts one for the
tests: its own datadir and unix socket in the work dir, no TCP port, root
without a password.  The soak restarts it in the middle of a cycle (SIGTERM,
a pause, the same datadir again) to see the stages live through it."""

import os
import shutil
import subprocess
import time

from bench.common import terminate

DATABASE = 'devstack_gate_soak'


class MariaDBError(Exception):
    """A one-line reason the private server could not be started."""


def find_binaries():
    """(mariadbd, install-db) paths, or None if MariaDB is not installed."""
    server = None
    for name in ('mariadbd', 'mysqld'):
        for path in (shutil.which(name), '/usr/sbin/' + name):
            if path and os.access(path, os.X_OK):
                server = path
                break
        if server:
            break
    install = shutil.which('mariadb-install-db') or shutil.which('mysql_install_db')
    return (server, install) if server and install else None


class PrivateMariaDB:
    def __init__(self, directory, start_timeout):
        self.dir = directory
        self.datadir = os.path.join(directory, 'data')
        self.socket = os.path.join(directory, 'mysqld.sock')
        self.pid_file = os.path.join(directory, 'mysqld.pid')
        self.log = os.path.join(directory, 'error.log')
        self.start_timeout = start_timeout
        self.proc = None
        self.restarts = 0
        binaries = find_binaries()
        if binaries is None:
            raise MariaDBError('no MariaDB server installed (mariadbd and mariadb-install-db); '
                               'install mariadb-server or use --database sqlite')
        self.server, self.install = binaries

    @property
    def url(self):
        return 'mysql://root@localhost/%s?unix_socket=%s' % (DATABASE, self.socket)

    def create(self):
        os.makedirs(self.dir, exist_ok=True)
        user = _user()
        with open(os.path.join(self.dir, 'install.log'), 'wb') as log:
            proc = subprocess.run([self.install, '--no-defaults', '--datadir=' + self.datadir,
                                   '--user=' + user, '--auth-root-authentication-method=normal',
                                   '--skip-test-db'], stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=self.start_timeout)
        if proc.returncode != 0:
            raise MariaDBError('mariadb-install-db failed (exit %d); log %s'
                               % (proc.returncode, os.path.join(self.dir, 'install.log')))
        self.start()
        self._sql('CREATE DATABASE IF NOT EXISTS %s' % DATABASE)

    def start(self):
        with open(self.log, 'ab') as log:
            self.proc = subprocess.Popen(
                [self.server, '--no-defaults', '--datadir=' + self.datadir, '--user=' + _user(),
                 '--socket=' + self.socket, '--pid-file=' + self.pid_file, '--skip-networking',
                 '--innodb-buffer-pool-size=64M', '--log-error=' + self.log],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise MariaDBError('mariadbd exited %s at start; log %s'
                                   % (self.proc.returncode, self.log))
            try:
                self._sql('SELECT 1')
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise MariaDBError('mariadbd did not answer within %g s; log %s'
                                       % (self.start_timeout, self.log))
                time.sleep(0.2)

    def stop(self, timeout=30.0):
        proc, self.proc = self.proc, None
        if proc is not None:
            terminate(proc, timeout)

    def restart(self, down):
        """Stop (SIGTERM, as an operator's restart does), stay down `down` s, start."""
        self.stop()
        time.sleep(down)
        self.start()
        self.restarts += 1

    def _sql(self, statement):
        import mysql.connector
        conn = mysql.connector.connect(user='root', unix_socket=self.socket,
                                       connection_timeout=3)
        try:
            cur = conn.cursor()
            cur.execute(statement)
            if cur.with_rows:
                cur.fetchall()
            conn.commit()
        finally:
            conn.close()


def _user():
    import pwd
    return pwd.getpwuid(os.getuid()).pw_name
