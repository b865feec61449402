"""Installing the other side: Nodepool 11 into its own virtualenv, ZooKeeper from Debian.

Nothing of Nodepool is kept in the repository: ``ensure_nodepool`` makes an
ignored virtualenv (``.bench-nodepool/`` at the repository root, or
``$BENCH_NODEPOOL_VENV``) and pip-installs ``nodepool==NODEPOOL_VERSION`` into
it from the package index, once.  ``ensure_zookeeper`` apt-gets Debian's
``zookeeper`` when it is missing (as root only).  Either one failing raises
:class:`ToolMissing` with one line saying what is missing.
"""

import os
import shutil
import subprocess
import sys

from bench.common import ROOT

NODEPOOL_VERSION = '11.0.0'
#: Installed beside it: modules Nodepool 11 imports without declaring them
#: (``nodepool.driver.statemachine`` imports cachetools, which came in through
#: google-auth until google-auth stopped requiring it), with why.
UNDECLARED = {'cachetools': 'imported by nodepool.driver.statemachine, not in its '
                            'requirements (it used to come with google-auth)'}
VENV_ENV = 'BENCH_NODEPOOL_VENV'
DEFAULT_VENV = os.path.join(ROOT, '.bench-nodepool')
#: Seconds pip and apt-get may take.
INSTALL_TIMEOUT = 1200
ZK_PACKAGE = 'zookeeper'
ZK_JAR = '/usr/share/java/zookeeper.jar'


class ToolMissing(RuntimeError):
    """Nodepool, ZooKeeper, Java or openssl cannot be had: one line says which."""


def venv_dir(environ=None):
    return (environ or os.environ).get(VENV_ENV) or DEFAULT_VENV


def venv_python(venv):
    return os.path.join(venv, 'bin', 'python')


def installed_version(venv):
    """The nodepool version installed in the venv, or None."""
    python = venv_python(venv)
    if not os.path.exists(python):
        return None
    got = subprocess.run([python, '-c', 'import importlib.metadata as m; '
                          'print(m.version("nodepool"))'], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120)
    return got.stdout.strip() if got.returncode == 0 else None


def _run(argv, what, timeout=INSTALL_TIMEOUT, env=None):
    try:
        got = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=timeout, env=env)
    except FileNotFoundError:
        raise ToolMissing('%s: %s not found' % (what, argv[0])) from None
    except subprocess.TimeoutExpired:
        raise ToolMissing('%s did not finish within %d s' % (what, timeout)) from None
    if got.returncode != 0:
        last = [line for line in (got.stderr or got.stdout).strip().splitlines()
                if line.strip() and not line.startswith('WARNING: Location')]
        raise ToolMissing('%s failed (exit %d): %s' % (what, got.returncode,
                                                      last[-1] if last else 'no output'))
    return got


def ensure_nodepool(venv=None, python=None, say=None):
    """The venv holding nodepool==NODEPOOL_VERSION, installing it if needed."""
    venv = venv or venv_dir()
    if installed_version(venv) == NODEPOOL_VERSION and _imports(venv):
        return venv
    if say:
        say('installing nodepool==%s into %s' % (NODEPOOL_VERSION, venv))
    if not os.path.exists(venv_python(venv)):
        _run([python or sys.executable, '-m', 'venv', venv], 'making the virtualenv %s' % venv)
    _run([venv_python(venv), '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
          'nodepool==%s' % NODEPOOL_VERSION] + sorted(UNDECLARED),
         'pip install nodepool==%s' % NODEPOOL_VERSION)
    got = installed_version(venv)
    if got != NODEPOOL_VERSION:
        raise ToolMissing('nodepool %s not importable in %s after installing (found %s)'
                          % (NODEPOOL_VERSION, venv, got))
    return venv


def _imports(venv):
    got = subprocess.run([venv_python(venv), '-c', 'import %s' % ', '.join(sorted(UNDECLARED))],
                         capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    return got.returncode == 0


def ensure_zookeeper(jar=ZK_JAR, say=None):
    if os.path.exists(jar):
        return jar
    if shutil.which('apt-get') is None:
        raise ToolMissing('ZooKeeper is not installed (%s missing) and there is no apt-get' % jar)
    if os.geteuid() != 0:
        raise ToolMissing('ZooKeeper is not installed (%s missing); as root: apt-get install %s'
                          % (jar, ZK_PACKAGE))
    if say:
        say('installing %s with apt-get' % ZK_PACKAGE)
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    _run(['apt-get', 'install', '-y', '--no-install-recommends', ZK_PACKAGE],
         'apt-get install %s' % ZK_PACKAGE, env=env)
    if not os.path.exists(jar):
        raise ToolMissing('apt-get installed %s but %s is missing' % (ZK_PACKAGE, jar))
    return jar


def ensure_java():
    if shutil.which('java') is None:
        raise ToolMissing('java is not installed (ZooKeeper needs a JRE)')
