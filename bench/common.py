"""What every benchmark shares: result rows, goals, the table, the JSON, the
machine's facts, and the databases a benchmark runs on.

A benchmark module has ``NAME`` and ``run(ctx)`` returning a list of
:class:`Row`.  Every figure is stated against a reference measured in the same
run (``reference``), and every goal is checked by the code that states it
(``Goal``), so the table says when one is missed.  References are never tuned.
"""

import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The MariaDB/MySQL server the benchmarks create their databases on (the same
#: variable the tests use; ./dev.sh bench finds or starts a server and sets it).
MYSQL_ENV = 'DEVSTACK_GATE_TEST_MYSQL_URL'

PROFILES = ('short', 'full')


@dataclasses.dataclass(frozen=True)
class Goal:
    """``value OP limit``, where value is the row's value or its ratio."""
    op: str                 # '<=', '<', '>=', '>', '=='
    limit: float
    of: str = 'value'       # 'value' or 'ratio'
    text: str = ''          # how the issue states it, for the table

    def met(self, row):
        x = row.ratio if self.of == 'ratio' else row.value
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return False
        return {'<=': x <= self.limit, '<': x < self.limit, '>=': x >= self.limit,
                '>': x > self.limit, '==': x == self.limit}[self.op]

    def describe(self):
        return self.text or '%s %s %s' % (self.of, self.op, fmt(self.limit))


@dataclasses.dataclass
class Row:
    bench: str
    case: str
    metric: str
    value: float
    unit: str = ''
    reference: float = None         # same-run reference the value is set against
    reference_name: str = None
    goal: Goal = None
    detail: dict = dataclasses.field(default_factory=dict)

    @property
    def ratio(self):
        if self.reference in (None, 0) or self.value is None:
            return None
        return self.value / self.reference

    @property
    def met(self):
        return None if self.goal is None else self.goal.met(self)

    def as_dict(self):
        return {
            'bench': self.bench, 'case': self.case, 'metric': self.metric,
            'value': self.value, 'unit': self.unit, 'reference': self.reference,
            'reference_name': self.reference_name, 'ratio': self.ratio,
            'goal': self.goal.describe() if self.goal else None, 'met': self.met,
            'detail': self.detail,
        }


@dataclasses.dataclass
class Context:
    profile: str            # 'short' (seconds, the suite's) or 'full' (the figures)
    workdir: str            # a private temporary directory for this run
    mysql_server: str = None    # server URL, or None when no server answers

    @property
    def full(self):
        return self.profile == 'full'

    def pick(self, short, full):
        """The short profile's size or the full one's."""
        return full if self.full else short

    def backends(self):
        """The backends to measure: SQLite always, MariaDB when a server answers."""
        return ['sqlite'] + (['mariadb'] if self.mysql_server else [])

    @contextlib.contextmanager
    def database(self, backend):
        """A fresh, empty database URL of this backend; dropped afterwards."""
        if backend == 'sqlite':
            path = os.path.join(self.workdir, 'bench-%s.db' % uuid.uuid4().hex[:8])
            try:
                yield 'sqlite:///%s' % path
            finally:
                for suffix in ('', '-wal', '-shm'):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path + suffix)
            return
        name = 'dgbench_%s' % uuid.uuid4().hex[:12]
        conn = mysql_connect(self.mysql_server)
        conn.cursor().execute('CREATE DATABASE `%s`' % name)
        conn.close()
        try:
            u = urllib.parse.urlsplit(self.mysql_server)
            yield urllib.parse.urlunsplit((u.scheme, u.netloc, '/' + name, u.query, ''))
        finally:
            conn = mysql_connect(self.mysql_server)
            conn.cursor().execute('DROP DATABASE IF EXISTS `%s`' % name)
            conn.close()


def mysql_connect(server_url, database=None):
    import mysql.connector
    u = urllib.parse.urlsplit(server_url)
    q = urllib.parse.parse_qs(u.query)
    kw = {'user': u.username or 'root', 'autocommit': True, 'connection_timeout': 5}
    if 'unix_socket' in q:
        kw['unix_socket'] = q['unix_socket'][0]
    else:
        kw.update(host=u.hostname or '127.0.0.1', port=u.port or 3306)
    if database:
        kw['database'] = database
    return mysql.connector.connect(**kw)


def mysql_server(environ=None):
    """The server URL from $DEVSTACK_GATE_TEST_MYSQL_URL if one answers there."""
    url = (environ or os.environ).get(MYSQL_ENV)
    if not url:
        return None
    try:
        mysql_connect(url).close()
    except Exception:
        return None
    return url


# -- measuring ---------------------------------------------------------------

def percentile(values, p):
    """The p-th percentile (0-100) by the nearest-rank method; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def python_cmd():
    """The interpreter the stages run under (this one), with the repository importable."""
    return [sys.executable]


def child_env(extra=None):
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env.update(extra or {})
    return env


def spawn_measured(argv, env=None, cwd=None, timeout=600):
    """Run a process and reap it with wait4: returns a dict with rc, wall, cpu (s),
    rss_mib (peak), stdout and stderr (strings)."""
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=out_f, stderr=err_f)
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise RuntimeError('%s did not finish within %d s' % (' '.join(argv[:3]), timeout))
        time.sleep(0.005)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out_f.seek(0)
    err_f.seek(0)
    return {
        'rc': proc.returncode, 'wall': wall, 'cpu': usage.ru_utime + usage.ru_stime,
        'rss_mib': usage.ru_maxrss / 1024.0,
        'stdout': out_f.read().decode('utf-8', 'replace'),
        'stderr': err_f.read().decode('utf-8', 'replace'),
    }


def process_cpu(pid):
    """CPU seconds a running process and its reaped children have used (None: gone)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except OSError:
        return None
    return sum(int(x) for x in fields[11:15]) / os.sysconf('SC_CLK_TCK')


def terminate(proc, timeout):
    """SIGTERM a child process, SIGKILL it if it is not gone within `timeout` s;
    True if it went on SIGTERM (or had gone already)."""
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


# -- the machine -------------------------------------------------------------

def machine(ctx):
    facts = {
        'cores': os.cpu_count(),
        'python': platform.python_version(),
        'implementation': platform.python_implementation(),
        'platform': platform.platform(),
        'sqlite': sqlite3.sqlite_version,
        'mariadb': None,
        'profile': ctx.profile,
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'commit': None,
    }
    if ctx.mysql_server:
        with contextlib.suppress(Exception):
            conn = mysql_connect(ctx.mysql_server)
            cur = conn.cursor()
            cur.execute('SELECT VERSION()')
            facts['mariadb'] = cur.fetchone()[0]
            conn.close()
    with contextlib.suppress(Exception):
        facts['commit'] = subprocess.run(
            ['git', '-C', ROOT, 'rev-parse', '--short', 'HEAD'], capture_output=True,
            text=True, timeout=10).stdout.strip() or None
    return facts


# -- the table ---------------------------------------------------------------

def fmt(x):
    if x is None:
        return '-'
    if isinstance(x, bool):
        return 'yes' if x else 'no'
    if isinstance(x, int):
        return str(x)
    if x == 0:
        return '0'
    if abs(x) >= 100:
        return '%.0f' % x
    if abs(x) >= 10:
        return '%.1f' % x
    if abs(x) >= 1:
        return '%.2f' % x
    return '%.3g' % x


def table(rows):
    """The rows as a fixed-width text table; MISSED marks a goal not met."""
    header = ('bench', 'case', 'metric', 'value', 'reference', 'ratio', 'goal', 'met')
    lines = [header]
    for r in rows:
        ref = '' if r.reference is None else '%s %s' % (fmt(r.reference), r.reference_name or '')
        lines.append((r.bench, r.case, r.metric, ('%s %s' % (fmt(r.value), r.unit)).strip(),
                      ref.strip(), fmt(r.ratio) if r.ratio is not None else '',
                      r.goal.describe() if r.goal else '',
                      '' if r.met is None else ('ok' if r.met else 'MISSED')))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append('  '.join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append('  '.join('-' * w for w in widths))
    return '\n'.join(out)


def write_json(path, ctx, rows, errors):
    data = {'machine': machine(ctx), 'rows': [r.as_dict() for r in rows],
            'errors': errors,
            'goals': {'checked': sum(r.met is not None for r in rows),
                      'missed': sum(r.met is False for r in rows)}}
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write('\n')
    os.replace(tmp, path)
    return data
