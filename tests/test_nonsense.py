"""A cloud that answers nonsense, pages that never end, and a clouds.yaml that is not one.

Everything goes through the real novaclient/glanceclient over HTTP to a local
cloud whose ``nonsense`` and ``paging`` knobs garble its answers; the stages
run as subprocesses.  Whatever the cloud answers, a stage prints one line
naming the provider and the call, and no traceback.
"""

import logging
import os
import re
import subprocess
import sys
import time

import pytest

from devstackgate import cloud
from devstackgate.drivers import openstack
from devstackgate.errors import ConfigError
from localcloud import faults
from localcloud.testing import local_clouds
from tests.pool import BASE_IMAGE, ROOT, Pool, cloud_config, make_base_dir, provider
from tests.test_cloud import adapter_for

LIST = 'GET /compute/v2.1/servers/detail'
IMAGES = 'GET /image/v2/images'
#: The nonsense that garbles any answer, and that which needs an entry in it.
ANY_ANSWER = ('truncated-json', 'html-200', 'empty-object')
ENTRY = ('missing-id', 'missing-name', 'string-item')
SERVER_ONLY = ('null-addresses', 'bad-metadata')


@pytest.fixture(scope='module')
def local(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('nonsense')
    with local_clouds({'clouds': [cloud_config('rax', make_base_dir(tmp),
                                               **{'max-page-size': 2})]},
                      tmp_dir=str(tmp)) as lc:
        yield lc


@pytest.fixture
def rax(local):
    yield local['rax']
    local['rax'].set_faults({'nonsense': None, 'paging': 'normal', 'api-latency': 0})




@pytest.fixture(scope='module')
def servers(local):
    """Three servers (two pages at max-page-size 2) and the base image."""
    a = adapter_for(local)
    (image,) = a.list_images()
    ids = [a.create_server('dg-n-%d' % i, image.id, '1', None, {'dg-kind': 'node'})
           for i in range(3)]
    return a, image, ids


# -- every converted answer is converted inside the classified path ---------------------

CALLS = [
    # kind, call, what the message names, nonsense that applies
    ('list-servers', lambda a, image, sid: a.list_servers(), 'list servers: %s a server list',
     ANY_ANSWER + ENTRY + SERVER_ONLY),
    ('show-server', lambda a, image, sid: a.get_server(sid), 'get server %(sid)s: %s a server',
     ANY_ANSWER + ENTRY + SERVER_ONLY),
    ('list-images', lambda a, image, sid: a.list_images(), 'list images: %s an image list',
     ANY_ANSWER + ENTRY),
    ('show-image', lambda a, image, sid: a.get_image(image.id),
     'get image %(image)s: %s an image', ANY_ANSWER + ENTRY),
    ('list-flavors', lambda a, image, sid: cloud.Adapter.list_flavors(a),
     'list flavors: %s a flavor list', ANY_ANSWER + ENTRY),
    ('create-server', lambda a, image, sid: a.create_server('dg-n-x', image.id, '1', None, {}),
     'create server dg-n-x: %s a new server', ANY_ANSWER + ('missing-id', 'string-item')),
    ('list-keypairs', lambda a, image, sid: a.list_keypairs(), 'list keypairs: %s a keypair list',
     ANY_ANSWER),
]
CASES = [(kind, call, message, nonsense) for kind, call, message, modes in CALLS
         for nonsense in modes]


@pytest.mark.parametrize('kind,call,message,nonsense', CASES,
                         ids=['%s-%s' % (c[0], c[3]) for c in CASES])
def test_nonsense_is_one_classified_error_naming_provider_and_call(servers, rax, kind, call,
                                                                   message, nonsense):
    a, image, ids = servers
    if kind == 'list-flavors':
        call = lambda a, image, sid: a.list_flavors()    # noqa: E731
    rax.set_faults({'nonsense': {kind: nonsense}})
    rax.reset_stats()
    with pytest.raises(cloud.BadAnswer) as e:
        call(a, image, ids[0])
    expected = 'provider rax: ' + message.replace('%(sid)s', ids[0]).replace(
        '%(image)s', image.id) % 'the cloud answered something that is not'
    text = str(e.value)
    assert text.startswith(expected + ' ('), text
    assert e.value.reason == 'bad-answer' and '\n' not in text and 'gave up' not in text
    assert sum(rax.stats()['calls'].values()) <= 2 + (kind == 'list-servers'), \
        'nonsense is never retried'


def test_nonsense_messages_say_what_was_wrong(servers, rax):
    a, image, ids = servers
    said = {}
    for nonsense in ANY_ANSWER + ENTRY + SERVER_ONLY:
        rax.set_faults({'nonsense': {'all': nonsense}})
        with pytest.raises(cloud.BadAnswer) as e:
            a.list_servers()
        said[nonsense] = str(e.value).split(' (', 1)[1]
    assert said['truncated-json'].startswith('HTTP 200, not valid JSON: ')
    assert said['html-200'] == 'HTTP 200 with text/html, not JSON)'
    assert said['empty-object'] == 'a server list whose servers are nothing)'
    assert said['missing-id'] == 'server has no id)'
    assert re.fullmatch(r'server \S+ has no name\)', said['missing-name'])
    assert re.fullmatch(r'server \S+: addresses is nothing, not a mapping\)',
                        said['null-addresses'])
    assert re.fullmatch(r'server \S+: metadata is a list, not a mapping\)', said['bad-metadata'])
    rax.set_faults({'nonsense': None})
    assert set(ids) <= {s.id for s in a.list_servers()}


# -- paging -----------------------------------------------------------------------------

def test_a_repeated_marker_is_an_error_at_once(servers, rax):
    a, image, ids = servers
    rax.reset_stats()
    listed = [s.id for s in a.list_servers()]
    assert set(ids) <= set(listed) and len(listed) == len(set(listed))
    # pages of two at most; a full page links the next, so an empty one ends a list
    # whose last page is full, and a page with room to spare ends it at once
    assert rax.calls(LIST) == len(listed) // 2 + 1
    rax.set_faults({'paging': 'repeat-marker'})
    rax.reset_stats()
    started = time.monotonic()
    with pytest.raises(cloud.BadAnswer) as e:
        a.list_servers()
    assert time.monotonic() - started < 2
    assert re.fullmatch(r"provider rax: list servers: the cloud's pages do not advance "
                        r"\(marker \S+ repeated after 2 pages\)", str(e.value)), str(e.value)
    assert rax.calls(LIST) == 2
    with pytest.raises(cloud.BadAnswer) as e:
        a.list_images()
    assert re.fullmatch(r"provider rax: list images: the cloud's pages do not advance "
                        r"\(image \S+ listed again after 1 images\)", str(e.value)), str(e.value)


@pytest.mark.parametrize('call,what,key', [('list_servers', 'list servers', LIST),
                                           ('list_images', 'list images', IMAGES)])
def test_endless_paging_is_cut_off_at_api_timeout(local, rax, call, what, key):
    a = adapter_for(local, **{'api-timeout': 1})
    a.list_servers()                                # authenticated before the clock starts
    rax.set_faults({'paging': 'endless', 'api-latency': 0.1})
    rax.reset_stats()
    started = time.monotonic()
    with pytest.raises(cloud.CallTimeout) as e:
        getattr(a, call)()
    took = time.monotonic() - started
    assert 0.9 < took < 1.6, took
    assert str(e.value) == 'provider rax: %s: no complete answer within api-timeout (1 s)' % what
    assert e.value.reason == 'api-timeout'
    assert rax.calls(key) >= 4, 'it was paging'


def test_api_timeout_bounds_the_pages_and_their_retries_together(local, rax):
    a = adapter_for(local, **{'api-timeout': 1, 'api-retries': 100, 'api-backoff': 0.05})
    a.list_servers()
    rax.set_faults({'api-error-rate': 0.5, 'paging': 'endless'})
    started = time.monotonic()
    with pytest.raises(cloud.CloudError):
        a.list_servers()
    assert time.monotonic() - started < 1.6
    rax.set_faults({'api-error-rate': 0.0})


# -- through the stages -----------------------------------------------------------------

@pytest.fixture
def pool(tmp_path, clouds_for, sqlite_url):
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base, **{'max-page-size': 2}))
    pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', **{'api-timeout': 1})])
    pool.seed_base_images('rax', 'precise')
    # Servers of someone else's, so every server list has entries to garble, and
    # fills a page (which links the next: the paging faults are met at once).
    nova = clouds['rax'].nova()
    (image,) = [i for i in clouds['rax'].images() if i['name'] == BASE_IMAGE]
    for name in ('stray-1', 'stray-2'):
        nova.servers.create(name, image['id'], '1')
    return pool


def one_line_failure(proc, script, pattern):
    assert proc.returncode == 1, proc.stderr
    assert 'Traceback' not in proc.stderr and 'Traceback' not in proc.stdout, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch('%s: provider rax: %s' % (script, pattern), last), last
    assert proc.stderr.count(last.split(': ', 1)[1]) == 1, proc.stderr


@pytest.mark.parametrize('nonsense', ANY_ANSWER + ENTRY + SERVER_ONLY)
def test_launch_says_one_line_whatever_the_server_list_is(pool, nonsense):
    pool.clouds['rax'].set_faults({'nonsense': {'list-servers': nonsense}})
    proc = pool.run('devstack-vm-launch.py', 'rax')
    one_line_failure(proc, 'devstack-vm-launch', r'list servers: the cloud answered something '
                     r'that is not a server list \(.+\)')
    assert pool.nodes(provider='rax') == []


@pytest.mark.parametrize('nonsense', ANY_ANSWER + ENTRY)
def test_reap_says_one_line_whatever_the_image_list_is(pool, nonsense):
    pool.clouds['rax'].set_faults({'nonsense': {'list-images': nonsense}})
    proc = pool.run('devstack-vm-reap.py', 'rax')
    one_line_failure(proc, 'devstack-vm-reap', r'list images: the cloud answered something '
                     r'that is not an image list \(.+\)')


@pytest.mark.parametrize('script', ['devstack-vm-launch.py', 'devstack-vm-reap.py'])
def test_stages_say_one_line_when_every_answer_is_html_or_pages_never_end(pool, script):
    name = script[:-3]
    pool.clouds['rax'].set_faults({'nonsense': {'all': 'html-200'}})
    one_line_failure(pool.run(script, 'rax'), name, r'list servers: the cloud answered '
                     r'something that is not a server list \(HTTP 200 with text/html, not JSON\)')
    pool.clouds['rax'].set_faults({'nonsense': None, 'paging': 'repeat-marker'})
    one_line_failure(pool.run(script, 'rax'), name,
                     r"list servers: the cloud's pages do not advance \(marker \S+ repeated "
                     r"after 2 pages\)")
    pool.clouds['rax'].set_faults({'paging': 'endless', 'api-latency': 0.05})
    one_line_failure(pool.run(script, 'rax'), name,
                     r'list servers: no complete answer within api-timeout \(1 s\)')


# -- clouds.yaml ------------------------------------------------------------------------

def clouds_yaml(tmp_path, content, mode=0o600):
    path = tmp_path / 'clouds.yaml'
    if isinstance(content, str):
        content = content.encode('utf-8')
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


@pytest.mark.parametrize('content,problem', [
    (b'clouds:\n  rax: {auth: {password: "\xff"}}\n',
     '{path}: not valid UTF-8 (byte 0xff at offset 34): expected a clouds.yaml in UTF-8'),
    ('clouds:\n  rax: {auth: [}\n', '{path}: invalid YAML (line 2, column 16): expected a clouds.yaml'),
    ('- rax\n', '{path}: expected a "clouds:" mapping of cloud names to entries, got a list'),
    ('clouds: rax\n', '{path}: expected a "clouds:" mapping of cloud names to entries, got a '
     'string'),
    ('clouds:\n  hp: {}\n', "{path}: cloud 'rax' is not there; clouds there: hp"),
    ('clouds:\n  rax: secret-password\n',
     '{path}: clouds.rax: expected a mapping (auth, region_name, ...), got a string'),
    ('clouds:\n  rax: {auth: secret-password}\n',
     '{path}: clouds.rax.auth: expected a mapping (auth_url, username, password, ...), got a '
     'string'),
    ('clouds:\n  rax: {auth: {password: [secret]}}\n',
     '{path}: clouds.rax.auth.password: expected a string, got a list'),
    ('clouds:\n  rax: {auth: {}, region_name: [a]}\n',
     '{path}: clouds.rax.region_name: expected a string, got a list'),
])
def test_a_bad_clouds_yaml_is_one_config_error_line(tmp_path, content, problem):
    path = clouds_yaml(tmp_path, content)
    with pytest.raises(ConfigError) as e:
        openstack.load_cloud_entry('rax', {'OS_CLIENT_CONFIG_FILE': path})
    (line,) = e.value.lines()
    if 'invalid YAML' in problem:
        line = re.sub(r': [^:]+: expected a clouds.yaml$', ': expected a clouds.yaml', line)
    assert line == problem.format(path=path)
    assert e.value.exit_code == 2 and 'secret' not in line


def test_a_bad_clouds_yaml_entry_stops_a_stage_with_exit_2(pool, tmp_path):
    path = clouds_yaml(tmp_path, 'clouds:\n  rax: {auth: hunter2-password}\n')
    proc = pool.run('devstack-vm-launch.py', 'rax', env={'OS_CLIENT_CONFIG_FILE': path})
    assert proc.returncode == 2, proc.stderr
    assert 'Traceback' not in proc.stderr and 'hunter2' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        'devstack-vm-launch: %s: clouds.rax.auth: expected a mapping (auth_url, username, '
        'password, ...), got a string' % path)


def test_a_clouds_yaml_others_can_read_warns_once(local, tmp_path, caplog):
    with open(local.clouds_yaml) as f:
        text = f.read()
    assert os.stat(local.clouds_yaml).st_mode & 0o077 == 0, 'localcloud writes it 0600'
    caplog.set_level(logging.WARNING)
    private = clouds_yaml(tmp_path, text)
    env = {'OS_CLIENT_CONFIG_FILE': private}
    openstack.load_cloud_entry('rax', env)
    assert [r for r in caplog.records if r.name == 'secrets'] == []
    (tmp_path / 'shared').mkdir()
    shared = clouds_yaml(tmp_path / 'shared', text, 0o644)
    for _ in range(2):
        openstack.load_cloud_entry('rax', {'OS_CLIENT_CONFIG_FILE': shared})
    (record,) = [r for r in caplog.records if r.name == 'secrets']
    assert record.levelname == 'WARNING'
    assert record.getMessage() == ('clouds.yaml %s is readable by others (mode 0644) and holds '
                                   'passwords: chmod 600 it' % shared)


@pytest.mark.parametrize('mode,warns', [(0o644, True), (0o600, False)])
def test_a_mysql_option_file_others_can_read_warns(tmp_path, caplog, mode, warns):
    import vmdatabase
    from devstackgate.errors import DatabaseError
    option_file = tmp_path / 'my.cnf'
    option_file.write_text('[client]\npassword=not-a-real-one\n')
    option_file.chmod(mode)
    caplog.set_level(logging.WARNING)
    url = 'mysql://dg@localhost/dg?unix_socket=%s&option-file=%s' % (tmp_path / 'no.sock',
                                                                     option_file)
    with pytest.raises(DatabaseError):
        vmdatabase.Database(url, reconnect_wait=0).version()
    records = [r.getMessage() for r in caplog.records if r.name == 'secrets']
    assert records == (['MySQL option file %s is readable by others (mode 0644) and holds '
                        'passwords: chmod 600 it' % option_file] if warns else [])


# -- start-up cost ----------------------------------------------------------------------

def test_glanceclient_is_imported_only_for_an_image_call(local):
    code = ('import sys\n'
            'from devstackgate import cloud, config\n'
            'env = {"OS_CLIENT_CONFIG_FILE": sys.argv[1]}\n'
            'cfg = config.validate({"providers": [{"name": "rax", "cloud": "rax", "api-rate": 0,'
            ' "images": [{"name": "p", "base-image": "x"}]}]}, "t.yaml", environ=env)\n'
            'a = cloud.connect(cfg.providers[0], environ=env)\n'
            'a.list_servers()\n'
            'print("glanceclient" in sys.modules)\n'
            'a.list_images()\n'
            'print("glanceclient" in sys.modules)\n')
    out = subprocess.run([sys.executable, '-c', code, local.clouds_yaml], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.stdout.split() == ['False', 'True'], out.stderr


def test_the_knobs_are_known_to_the_local_cloud():
    assert set(faults.NONSENSE) >= set(ANY_ANSWER + ENTRY + SERVER_ONLY)
