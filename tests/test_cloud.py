"""The provider seam, and the OpenStack driver through the real novaclient/glanceclient
against a local cloud."""

import time

import paramiko
import pytest

from devstackgate import cloud, config, wait
from localcloud.testing import local_clouds
from tests.pool import BASE_IMAGE, cloud_config, make_base_dir

TOKENS = 'POST /identity/v3/auth/tokens'
LIST = 'GET /compute/v2.1/servers/detail'


@pytest.fixture
def local(tmp_path):
    with local_clouds({'clouds': [cloud_config('rax', make_base_dir(tmp_path))]},
                      tmp_dir=str(tmp_path)) as lc:
        yield lc


def adapter_for(lc, **overrides):
    data = {'providers': [dict({'name': 'rax', 'cloud': 'rax', 'api-rate': 0, 'api-backoff': 0.01,
                                'api-timeout': 10,
                                'images': [{'name': 'precise', 'base-image': BASE_IMAGE}]},
                               **overrides)]}
    env = {'OS_CLIENT_CONFIG_FILE': lc.clouds_yaml}
    cfg = config.validate(data, 'test.yaml', environ=env)
    return cloud.connect(cfg.providers[0], environ=env)


def test_servers_images_flavors_round_trip(local):
    a = adapter_for(local)
    (base,) = [i for i in a.list_images() if i.name == BASE_IMAGE]
    assert (base.state, base.detail) == ('active', 'active')
    flavor = a.flavor_for(1024)
    assert (flavor.name, flavor.ram) == ('m1.small', 2048)
    with pytest.raises(cloud.NoFlavor) as e:
        a.flavor_for(10 ** 7)
    assert e.value.reason == 'no-flavor' and 'no flavor has min-ram 10000000 MB' in str(e.value)
    key = paramiko.ECDSAKey.generate()
    public = '%s %s' % (key.get_name(), key.get_base64())
    assert a.ensure_keypair('dg-rax', public + ' test') is True
    assert a.ensure_keypair('dg-rax', public + ' other comment') is False   # same key body
    other = paramiko.ECDSAKey.generate()
    assert a.ensure_keypair('dg-rax', '%s %s' % (other.get_name(), other.get_base64())) is True
    meta = cloud.tags('rax', 'node', 'precise', node_id=1)
    sid = a.create_server('dg-x-1', base.id, flavor.id, 'dg-rax', meta)
    assert a.get_server(sid).state == 'building'
    server = wait.for_state(lambda: a.get_server(sid), 'active', time.monotonic() + 10, 0.05,
                            'server')
    assert server.metadata == {'dg-provider': 'rax', 'dg-kind': 'node', 'dg-label': 'precise',
                               'dg-node-id': '1'}
    assert server.address.startswith('127.') and server.detail == 'ACTIVE'
    assert server.image_id == base.id
    assert [s.id for s in a.list_servers()] == [sid]
    assert a.delete_server(sid) is True
    deadline = time.monotonic() + 10
    while a.list_servers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert a.delete_server(sid) is False      # already gone: idempotent


def test_5xx_is_retried_with_backoff(local):
    a = adapter_for(local, **{'api-retries': 20})
    local['rax'].set_faults({'api-error-rate': 0.6})
    for _ in range(5):
        assert a.list_servers() == []
    assert local['rax'].calls(LIST) > 5, 'some calls must have failed and been retried'


def test_429_honours_retry_after(local):
    a = adapter_for(local)
    a.list_servers()            # authenticated before the limit bites
    local['rax'].set_faults({'api-overlimit-rate': 1.0})
    slept = []
    a._sleep = slept.append
    with pytest.raises(cloud.CloudError) as e:
        a.list_servers()
    assert 'rate limited (HTTP 429)' in str(e.value) and 'gave up after 6 attempts' in str(e.value)
    assert len(slept) == 5 and all(s >= 1 for s in slept), slept


def test_a_rate_limited_answer_slows_every_later_call_and_successes_speed_it_up(local):
    """429s double the spacing of the provider's calls (up to api-rate-max) and hold
    them until Retry-After; successes take it back toward api-rate."""
    a = adapter_for(local, **{'api-rate': 0.01, 'api-rate-max': 0.5, 'api-retries': 3})
    a.list_servers()
    assert a._limiter.interval == 0.01
    local['rax'].set_faults({'api-overlimit-rate': 1.0, 'api-overlimit-retry-after': 0})
    a._sleep = lambda s: None
    with pytest.raises(cloud.RateLimited) as e:
        a.list_servers()
    assert e.value.reason == 'rate-limited'
    assert a._limiter.interval == pytest.approx(0.08)      # three answers: x2 each
    local['rax'].set_faults({'api-overlimit-rate': 0.0})
    a._limiter._sleep = lambda s: None
    for _ in range(40):
        a.list_servers()
    assert 0.01 < a._limiter.interval < 0.02


def test_the_limiter_backs_off_to_its_ceiling_holds_calls_and_recovers():
    now = [100.0]
    slept = []
    limiter = cloud.RateLimiter(0.1, clock=lambda: now[0], sleep=slept.append, ceiling=1.0)
    limiter.limited(retry_after=3.0)
    assert limiter.interval == 0.2
    limiter.wait()
    assert slept == [3.0]                   # held until Retry-After
    for _ in range(10):
        limiter.limited()
    assert limiter.interval == 1.0          # never past the ceiling
    for _ in range(200):
        limiter.succeeded()
    assert limiter.interval == 0.1          # back to api-rate, not below
    unlimited = cloud.RateLimiter(0, ceiling=5.0)
    unlimited.limited()
    assert unlimited.interval == 0.1        # api-rate 0 still slows down when told to
    for _ in range(200):
        unlimited.succeeded()
    assert unlimited.interval == 0


def test_quota_is_classified_and_not_retried(local):
    a = adapter_for(local)
    local['rax'].set_faults({'quota': {'instances': 0}})
    (base,) = [i for i in a.list_images() if i.name == BASE_IMAGE]
    with pytest.raises(cloud.QuotaExceeded) as e:
        a.create_server('dg-q', base.id, '1', None, {})
    assert e.value.reason == 'quota' and 'Quota exceeded for instances' in str(e.value)
    assert local['rax'].calls('POST /compute/v2.1/servers') == 1


def test_outage_is_bounded_and_classified(local):
    a = adapter_for(local, **{'api-timeout': 1})
    a.list_servers()
    local['rax'].set_faults({'outage': True})
    started = time.monotonic()
    with pytest.raises(cloud.CloudUnavailable) as e:
        a.list_servers()
    assert time.monotonic() - started < 5
    assert e.value.reason == 'outage'
    local['rax'].set_faults({'outage': False})
    assert a.list_servers() == []


def test_401_reauthenticates_once(local):
    a = adapter_for(local)
    a.list_servers()
    before = local['rax'].calls(TOKENS)
    local['rax'].revoke_tokens()
    assert a.list_servers() == []
    assert local['rax'].calls(TOKENS) == before + 1


def test_expired_token_is_not_reused(local):
    local['rax'].set_faults({'token-ttl': 1})
    a = adapter_for(local)
    a.list_servers()
    before = local['rax'].calls(TOKENS)
    time.sleep(1.2)
    a.list_servers()
    assert local['rax'].calls(TOKENS) > before


def test_api_rate_spaces_calls(local):
    a = adapter_for(local, **{'api-rate': 0.2})
    started = time.monotonic()
    for _ in range(4):
        a.list_servers()
    assert time.monotonic() - started >= 0.6


def test_newest_image_matches_name_or_regex():
    images = [cloud.Image('a', 'Ubuntu 12.04 LTS', 'active', {}, '2012-01-01T00:00:00Z'),
              cloud.Image('b', 'Ubuntu 12.04.1 LTS', 'active', {}, '2012-06-01T00:00:00Z'),
              cloud.Image('c', 'Ubuntu 12.04.2 LTS', 'pending', {}, '2012-09-01T00:00:00Z')]
    assert cloud.newest_image(images, 'Ubuntu 12.04 LTS').id == 'a'
    assert cloud.newest_image(images, r'Ubuntu 12\.04.* LTS').id == 'b'
    assert cloud.newest_image(images, 'Fedora') is None
