"""Where the configuration file is, and what fetch needs of it without YAML.

Every full load (:func:`devstackgate.config.load`, any stage, and fetch when
it has to) that validates a file records what fetch needs of it (the database
settings, fetch-poll, and each provider's name, ssh-port and labels) in a
private cache, once fetch has created its directory (a stage never creates it:
a dry run on a fresh home creates nothing): one file per configuration path under
``$DEVSTACK_GATE_CACHE_DIR``, else ``$XDG_CACHE_HOME/devstack-gate``, else
``~/.cache/devstack-gate`` (a directory 0700 of this user, files 0600, each
written whole to a temporary name and renamed).

Fetch (:func:`load_view`) uses an entry only if all of this holds, else it
loads and validates the file as every other stage does:

- the entry is whole (a magic, a format number and a CRC-32 of its payload),
  owned by this user and readable by no one else, and for this configuration
  file's absolute path and this interpreter (executable and version);
- the configuration file has the device, inode, size, mtime_ns and ctime_ns it
  had when it was validated, and the very same bytes (so an edit within one
  clock tick of the validation, same size, is not missed either);
- the validating code is the one that wrote it: this module, config.py,
  errors.py, vmdatabase.py (the URL rules) and PyYAML have the device, inode,
  size, mtime_ns and ctime_ns they had, and this module is the one reading.

Only a file that validated is ever recorded, so a bad file always goes the
full way and gets its exact config-error lines.  The cache is stored with
:mod:`marshal` (built in) rather than JSON: ``import json`` pulls in ``re`` and
``enum``, which fetch's fast path otherwise never imports.  Nothing secret is
in it (the configuration holds no password), but it is private anyway.
"""

import marshal
import os
import stat
import sys

from devstackgate.errors import ConfigError

CONFIG_ENV = 'DEVSTACK_GATE_CONFIG'
DEFAULT_CONFIG_PATHS = (
    os.path.join('~', '.devstack-gate', 'devstack-gate.yaml'),
    os.path.join(os.sep, 'etc', 'devstack-gate', 'devstack-gate.yaml'),
)
CACHE_DIR_ENV = 'DEVSTACK_GATE_CACHE_DIR'
#: Bumped whenever what an entry holds changes.
FORMAT = 3
_MAGIC = b'DGFC'
#: The scalar settings fetch (and vmdatabase.Database.from_config) reads.
SETTINGS = ('database', 'db_lock_timeout', 'db_retries', 'db_idle_reuse', 'db_reconnect_wait',
            'db_writer_queue', 'db_claim_slots', 'db_claim_slot_wait', 'fetch_poll')


def first_existing(paths):
    """The first of `paths` (~ expanded) that exists, or None."""
    for candidate in paths:
        candidate = os.path.expanduser(candidate)
        if os.path.exists(candidate):
            return candidate
    return None


def find_config_path(path=None, environ=None):
    """--config, else $DEVSTACK_GATE_CONFIG, else the first default that exists."""
    environ = os.environ if environ is None else environ
    if path:
        return path
    if environ.get(CONFIG_ENV):
        return environ[CONFIG_ENV]
    found = first_existing(DEFAULT_CONFIG_PATHS)
    if found:
        return found
    raise ConfigError([
        'no configuration file: give --config, set $%s, or create one of %s'
        % (CONFIG_ENV, ', '.join(DEFAULT_CONFIG_PATHS))])


class FetchProvider:
    def __init__(self, name, ssh_port, labels):
        self.name, self.ssh_port, self.labels = name, ssh_port, tuple(labels)

    def image(self, label):
        """The label if this provider offers it, else None (as ProviderConfig.image)."""
        return label if label in self.labels else None


class FetchConfig:
    """What fetch reads of a validated configuration (a config.Config, or a cache entry)."""

    def __init__(self, path, view):
        self.path = path
        for name in SETTINGS:
            setattr(self, name, view[name])
        self.providers = tuple(FetchProvider(*p) for p in view['providers'])

    @classmethod
    def of(cls, config):
        return cls(config.path, view_of(config))

    def provider(self, name):
        for provider in self.providers:
            if provider.name == name:
                return provider
        raise ConfigError([     # as config.Config.provider says it
            '%s: providers: no provider named %r; known providers: %s'
            % (self.path, name, ', '.join(p.name for p in self.providers) or 'none')])

    def labels(self):
        """Every label any provider offers, sorted."""
        return sorted({label for p in self.providers for label in p.labels})


def view_of(config):
    """What a cache entry holds of a config.Config: plain values only."""
    view = {name: getattr(config, name) for name in SETTINGS}
    view['providers'] = [(p.name, p.ssh_port, [i.name for i in p.images])
                         for p in config.providers]
    return view


# -- the cache ---------------------------------------------------------------

def cache_dir(environ=None):
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_DIR_ENV):
        return environ[CACHE_DIR_ENV]
    base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'devstack-gate')


def _entry_path(directory, abspath):
    import zlib
    return os.path.join(directory, 'config-%08x.cache'
                        % zlib.crc32(abspath.encode('utf-8', 'surrogateescape')))


def _signature(st):
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _python():
    return (sys.executable, sys.version)


def _private(directory, create):
    """Whether `directory` is a directory of ours that no one else can read or write
    (with create, made so: created 0700, or its mode narrowed to 0700)."""
    if create:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        return False
    if st.st_mode & 0o077:
        if not create:
            return False
        os.chmod(directory, 0o700)
    return True


def _code_files():
    """The files whose code decides what a valid file means, this module first."""
    names = ('devstackgate.config_cache', 'devstackgate.config', 'devstackgate.errors',
             'vmdatabase', 'yaml')
    files = []
    for name in names:
        module = sys.modules.get(name)
        if module is None or not getattr(module, '__file__', None):
            return None         # the validating code is not all there: record nothing
        files.append(os.path.abspath(module.__file__))
    return files


def store(path, raw, st, config, create=False, environ=None):
    """Record a configuration file that validated: its bytes `raw`, read from an open
    file whose fstat was `st`.  Only fetch (create=True) creates the cache directory: a
    stage (a dry run) on a fresh home creates nothing.  Never raises: without a cache
    fetch just loads the file."""
    tmp = None
    try:
        files = _code_files()
        if files is None:
            return
        directory = cache_dir(environ)
        if not _private(directory, create=create):
            return
        abspath = os.path.abspath(path)
        record = {
            'format': FORMAT, 'path': abspath, 'python': _python(),
            'stat': _signature(st), 'text': bytes(raw),
            'code': [(f, _signature(os.stat(f))) for f in files],
            'view': view_of(config),
        }
        import zlib
        payload = marshal.dumps(record)
        data = _MAGIC + FORMAT.to_bytes(2, 'big') + zlib.crc32(payload).to_bytes(4, 'big') + payload
        target = _entry_path(directory, abspath)
        try:
            with open(target, 'rb') as f:
                if f.read() == data:
                    return          # already recorded: no write at every stage's start
        except OSError:
            pass
        tmp = os.path.join(directory, '.%s.%s.tmp' % (os.path.basename(target),
                                                      os.urandom(6).hex()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.replace(tmp, target)
        tmp = None
    except Exception:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def load_view(path, environ=None):
    """The FetchConfig of the configuration file at `path` from the cache, or None
    when there is no entry that holds for it now (see the module's rules)."""
    try:
        return _load_view(path, environ)
    except Exception:       # any doubt at all: the full load decides
        return None


def _load_view(path, environ):
    directory = cache_dir(environ)
    if not _private(directory, create=False):
        return None
    abspath = os.path.abspath(path)
    fd = os.open(_entry_path(directory, abspath), os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, 'rb') as f:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid()
                or st.st_mode & 0o077):
            return None
        data = f.read()
    header = len(_MAGIC) + 6
    if (data[:len(_MAGIC)] != _MAGIC or data[len(_MAGIC):len(_MAGIC) + 2] != FORMAT.to_bytes(2, 'big')):
        return None
    import zlib
    payload = data[header:]
    if zlib.crc32(payload).to_bytes(4, 'big') != data[len(_MAGIC) + 2:header]:
        return None
    record = marshal.loads(payload)
    if (not isinstance(record, dict) or record.get('format') != FORMAT
            or record.get('path') != abspath or tuple(record.get('python')) != _python()):
        return None
    code = record['code']
    if not code or code[0][0] != os.path.abspath(__file__):
        return None
    for name, signature in code:
        if _signature(os.stat(name)) != tuple(signature):
            return None
    with open(path, 'rb') as f:
        if _signature(os.fstat(f.fileno())) != tuple(record['stat']):
            return None
        if f.read() != record['text']:
            return None
    return FetchConfig(path, record['view'])
