"""Every API call's span: when it reached the cloud (before api-latency) and
when its answer was ready, as wall-clock times a test can compare, in this
process or through the admin endpoint of a ``devstack-localcloud run``."""

import json
import threading
import time

import pytest
import requests

from localcloud import cmd
from localcloud.config import DEFAULT_SPAN_HISTORY
from localcloud.testing import max_overlap, span_gaps

LATENCY = 0.3
LIST = "GET /compute/v2.1/servers/detail"
# time.sleep() sleeps at least LATENCY on the monotonic clock; spans are
# wall-clock, which NTP may slew by at most 500 ppm.
SLEPT = LATENCY * (1 - 0.0005)


def _authenticated_novas(cloud, count):
    """``count`` novaclients, each with its own session, already holding a
    token and the catalog (so later calls are only the ones we make)."""
    novas = [cloud.nova("2.1") for _ in range(count)]
    for nova in novas:
        nova.servers.list()
    return novas


def test_spans_helpers():
    assert max_overlap([]) == 0
    assert max_overlap([(0, 1), (1, 2), (2, 3)]) == 1     # touching only
    assert max_overlap([(0, 3), (1, 2), (1.5, 4), (3.5, 5)]) == 3
    assert span_gaps([(2, 3), (0, 1), (2.5, 4)]) == [1, -0.5]
    assert span_gaps([(0, 1)]) == []


@pytest.mark.parametrize("subprocess", [False, True],
                         ids=["in-process", "subprocess"])
def test_concurrent_calls_overlap(make_clouds, cloud_config, subprocess):
    count = 8
    lc = make_clouds({"clouds": [cloud_config()]}, subprocess=subprocess)
    cloud = lc["local"]
    novas = _authenticated_novas(cloud, count)
    cloud.reset_stats()
    cloud.set_faults({"api-latency": LATENCY})
    barrier = threading.Barrier(count)
    errors = []

    def list_servers(nova):
        try:
            barrier.wait(10)
            nova.servers.list()
        except Exception as e:      # reported below, not lost in a thread
            errors.append(e)

    threads = [threading.Thread(target=list_servers, args=(nova,))
               for nova in novas]
    before = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    after = time.time()
    assert errors == []

    spans = cloud.call_spans(LIST)
    assert len(spans) == count == cloud.calls(LIST)
    assert spans == sorted(spans)
    assert all(isinstance(t, float) for span in spans for t in span)
    # wall-clock times, comparable with this process's clock
    assert all(before <= start <= end <= after for start, end in spans)
    assert all(end - start >= SLEPT for start, end in spans)
    assert max_overlap(spans) >= 2
    assert after - before < count * LATENCY / 2
    assert cloud.spans() == {LIST: spans}


def test_sequential_calls_do_not_overlap(cloud):
    (nova,) = _authenticated_novas(cloud, 1)
    cloud.set_faults(api_latency=LATENCY)
    cloud.reset_stats()
    pause = 0.2
    before = time.time()
    for _ in range(3):
        nova.servers.list()
        time.sleep(pause)       # a client-side rate limit
    after = time.time()
    spans = cloud.call_spans(LIST)
    assert len(spans) == 3 and spans == sorted(spans)
    assert all(before <= start < end <= after for start, end in spans)
    assert all(end - start >= SLEPT for start, end in spans)
    assert max_overlap(spans) == 1
    assert all(gap >= pause for gap in span_gaps(spans))


def test_reset_stats_clears_spans(cloud):
    (nova,) = _authenticated_novas(cloud, 1)
    assert len(cloud.call_spans(LIST)) == 1
    assert LIST in cloud.spans()
    cloud.reset_stats()
    assert cloud.call_spans(LIST) == []
    assert cloud.spans() == {}
    nova.servers.list()
    assert len(cloud.call_spans(LIST)) == 1
    assert cloud.stats()["calls"] == {LIST: 1}     # stats keep their shape


def test_span_history_keeps_the_newest_calls(make_clouds, cloud_config):
    lc = make_clouds({"clouds": [cloud_config(**{"span-history": 5})]},
                     subprocess=True)
    cloud = lc["local"]
    url = cloud.auth_url
    starts = []
    for _ in range(8):
        starts.append(time.time())
        assert requests.get(url).status_code == 300
    spans = cloud.call_spans("GET /identity")
    assert len(spans) == 5
    assert cloud.calls("GET /identity") == 8            # counting is unbounded
    assert spans[0][0] >= starts[3]                     # the newest five
    assert spans == sorted(spans)


def test_default_span_history_bound(cloud):
    assert DEFAULT_SPAN_HISTORY == 1000
    url = cloud.auth_url.replace("/identity", "/nowhere")
    with requests.Session() as session:
        for _ in range(DEFAULT_SPAN_HISTORY + 5):
            assert session.get(url).status_code == 404
    assert cloud.calls("GET /nowhere") == DEFAULT_SPAN_HISTORY + 5
    spans = cloud.call_spans("GET /nowhere")
    assert len(spans) == DEFAULT_SPAN_HISTORY
    assert spans == sorted(spans)


def test_injected_errors_have_spans(cloud):
    cloud.set_faults({"api-error-rate": 1})
    cloud.reset_stats()
    assert requests.get(cloud.auth_url).status_code == 500
    assert len(cloud.call_spans("GET /identity")) == 1


def test_admin_endpoint_and_cli_show_spans(localcloud, cloud, capsys):
    (nova,) = _authenticated_novas(cloud, 1)
    cloud.reset_stats()
    nova.servers.list()
    nova.flavors.list()
    base = localcloud.admin_url + "/clouds/local/stats/spans"
    answer = requests.get(base).json()
    assert answer["limit"] == DEFAULT_SPAN_HISTORY
    assert sorted(answer["spans"]) == ["GET /compute/v2.1/flavors/detail",
                                       LIST]
    ((start, end),) = answer["spans"][LIST]
    assert [(start, end)] == cloud.call_spans(LIST)
    assert requests.get(base, params={"key": LIST}).json() == {
        "limit": DEFAULT_SPAN_HISTORY, "spans": {LIST: [[start, end]]}}
    assert requests.get(base, params={"key": "GET /nothing"}).json() == {
        "limit": DEFAULT_SPAN_HISTORY, "spans": {"GET /nothing": []}}
    assert "spans" not in cloud.stats()

    assert cmd.main(["stats", "--admin", localcloud.admin_url, "local",
                     "--spans", "--key", LIST]) == 0
    assert json.loads(capsys.readouterr().out)["spans"] == {
        LIST: [[start, end]]}
    assert cmd.main(["stats", "--admin", localcloud.admin_url, "local",
                     "--spans", "--reset"]) == 0
    assert len(json.loads(capsys.readouterr().out)["spans"]) == 2
    assert requests.get(base).json()["spans"] == {}
