"""devstackgate.status_page: a page rendered from a fabricated database (SQLite and
MariaDB), its content and escaping, the reconstructed ready history, and the page opened
in a real headless browser (Debian's chromium): a screenshot, and no console errors.

docs/make-status-screenshot.py uses fabricate() and screenshot() from here to keep
docs/status-page.png."""

import html
import os
import random
import re
import shutil
import struct
import subprocess

import pytest

import vmdatabase
from devstackgate import config as configmod, stats, status_page

HOUR = 3600.0
DAY = 24 * HOUR
NOW = 1378209600.0          # 2013-09-03 12:00 UTC
HELD_REASON = ('failure: change 4242,3 (job gate-integration-tests-devstack-vm, build 812); '
               '<script>alert("held")</script>')
PAUSE_REASON = 'nova <b>broke</b> the image & we wait'
FAILURE_RATES = {'rax': 0.4, 'hp': 0.05, 'ovh': 0.08}
LAUNCH_FAILURES = {'rax': ['error', 'no-network', 'error'], 'hp': ['quota'],
                   'ovh': ['timeout', 'ready-check']}
CONFIG = {
    'hold-hours': 24,
    'disabled-labels': {'raring': 'devstack does not support raring yet'},
    'providers': [
        {'name': 'rax', 'cloud': 'rax', 'max-servers': 40, 'images': [
            {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ready': 4},
            {'name': 'quantal', 'base-image': 'Ubuntu 12.10', 'paused': True}]},
        {'name': 'hp', 'cloud': 'hp', 'max-servers': 20, 'images': [
            {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ready': 4}]},
        {'name': 'ovh', 'cloud': 'ovh', 'images': [
            {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ready': 2},
            {'name': 'raring', 'base-image': 'Ubuntu 13.04'}]},
    ],
}
# The pool now: (provider, label) -> {state: count}.
POOL = {
    ('rax', 'precise'): {'building': 1, 'ready': 3, 'used': 2, 'hold': 1, 'delete': 1,
                         'error': 1},
    ('hp', 'precise'): {'building': 1, 'ready': 4, 'used': 1},
    ('ovh', 'precise'): {'ready': 2, 'hold': 1, 'delete': 1},
    ('rax', 'quantal'): {'ready': 1},
}


def make_config(tmp_path, db_url):
    return configmod.validate(dict(CONFIG, database=db_url), str(tmp_path / 'devstack-gate.yaml'),
                              check_clouds=False)


def fabricate(db, now=NOW, seed=42):
    """A week of a pool of three providers: rax fails 40% of its gate runs, hp 5%,
    ovh 8%; nodes in every state now; images current, previous and demoted; held nodes,
    a disabled label and paused builds."""
    rng = random.Random(seed)

    def history(s):
        past_node = 100000
        for provider, fail_rate in FAILURE_RATES.items():
            for hour in range(7 * 24):
                for _ in range(2 if hour < 24 or provider != 'ovh' else 1):
                    past_node += 1
                    start = now - (hour + rng.random()) * HOUR
                    ready_at = start - rng.uniform(300, 3 * HOUR)
                    s.record_launch(provider, 'precise', past_node, 'ready', None,
                                    rng.uniform(240, 420), ready_at)
                    row = s.create_result(now=start, provider=provider, label='precise',
                                          node_id=past_node, job_name='gate-integration-'
                                          'tests-devstack-vm', build_number=str(past_node))
                    verdict = rng.random()
                    result = ('failure' if verdict < fail_rate * 0.8 else
                              'timeout' if verdict < fail_rate else 'success')
                    if start + 1800 < now:
                        s.finish_result(row.id, result, now=start + rng.uniform(1500, 3000))
            for k, reason in enumerate(LAUNCH_FAILURES[provider] * 3):
                s.record_launch(provider, 'precise', None, 'failed', reason, rng.uniform(30, 600),
                                now - (k * 13 + 1) * HOUR)

    def pool(s):
        for (provider, label), states in POOL.items():
            for state, count in states.items():
                for _ in range(count):
                    since = now - rng.uniform(600, 5 * HOUR)
                    node = s.create_node(provider, label, state=state, now=since - 400)
                    s.update_node(node.id, name='dg-%s-%s-%d' % (label, provider, node.id),
                                  ip='198.51.100.%d' % node.id)
                    if state == 'building':
                        continue
                    s.record_launch(provider, label, node.id, 'ready', None, 400.0, since)
                    s.transition(node, state, now=since if state != 'used' else since + 60)
                    if state in ('used', 'hold'):
                        s.create_result(now=since + 60, provider=provider, label=label,
                                        node_id=node.id, node_name=node.name)
        held = s.nodes(provider='rax', label='precise', state='hold')[0]
        s.update_node(held.id, held_by='gate-integration-tests-devstack-vm #812',
                      hold_reason=HELD_REASON, hold_until=now + 20 * HOUR)
        held = s.nodes(provider='ovh', state='hold')[0]
        s.update_node(held.id, held_by='jeblair', hold_reason='debugging nova-network',
                      hold_until=now + 2 * HOUR)

    def images(s):
        for provider, label, age, state, demoted in [
                ('rax', 'precise', 74, 'ready', 0), ('rax', 'precise', 50, 'ready', 0),
                ('rax', 'precise', 26, 'ready', 1), ('rax', 'precise', 1, 'building', 0),
                ('rax', 'precise', 98, 'delete', 0),
                ('hp', 'precise', 44, 'ready', 0), ('hp', 'precise', 20, 'ready', 0),
                ('ovh', 'precise', 30, 'ready', 0), ('rax', 'quantal', 100, 'ready', 0)]:
            created = now - age * HOUR
            stamp = status_page.datetime.datetime.fromtimestamp(
                created, status_page.datetime.timezone.utc).strftime('%Y%m%dT%H%M%SZ')
            s.create_image(provider, label, state=state, now=created,
                           name='dg-%s-%s-%s' % (label, provider, stamp), demoted=demoted)
        s.pause_image('precise', 'hp', reason=PAUSE_REASON, set_by='clarkb', now=now - 3 * HOUR)

    for step in (history, pool, images):
        db.transact(step)
    return db


@pytest.fixture
def page(tmp_path, db_url):
    db = fabricate(vmdatabase.Database(db_url).upgrade())
    config = make_config(tmp_path, db_url)
    return db, config, status_page.render(db, config, now=NOW)


def text_of(fragment):
    """The text a reader sees (charts left out), whitespace collapsed."""
    fragment = re.sub(r'<svg.*?</svg>', ' ', fragment, flags=re.S)
    return ' '.join(html.unescape(re.sub(r'<[^>]+>', ' ', fragment)).split())


def test_page_shows_the_pool_failure_rates_images_holds_and_switches(page):
    db, config, text = page

    # Self-contained: no script, style sheet, font, image or frame from anywhere.
    assert re.findall(r'<(script|link|img|iframe|object|embed)\b', text, re.I) == []
    assert not re.search(r'(src|href)\s*=|url\(|@import', text, re.I)
    assert set(re.findall(r'https?://[^\s"\'<>]+', text)) == {'http://www.w3.org/2000/svg'}
    # User text is escaped wherever it appears.
    assert '<script>alert' not in text and '<b>broke' not in text
    assert html.escape(HELD_REASON) in text
    assert html.escape(PAUSE_REASON) in text

    # The pool now, per provider and label, every state.
    pool = {}
    provider = None
    for m in re.finditer(r'<h3>(\w+) |<tr><td>(\w+)</td>((?:<td class="n">[^<]*</td>){7})',
                         text[:text.index('id="history"')]):
        if m.group(1):
            provider = m.group(1)
        else:
            pool[(provider, m.group(2))] = [c for c in re.findall(r'>([^<]*)</td>', m.group(3))]
    assert pool == {
        ('rax', 'precise'): ['1', '3', '2', '1', '1', '1', '4'],
        ('rax', 'quantal'): ['0', '1', '0', '0', '0', '0', '1'],
        ('hp', 'precise'): ['1', '4', '1', '0', '0', '0', '4'],
        ('ovh', 'precise'): ['0', '2', '0', '1', '1', '0', '2'],
        ('ovh', 'raring'): ['0', '0', '0', '0', '0', '0', '1'],
    }
    assert '10 nodes; max-servers 40' in text
    pool_text = text_of(text[:text.index('id="history"')])
    assert 'raring 0 0 0 0 0 0 1 disabled' in pool_text
    assert 'quantal 0 1 0 0 0 0 1 builds paused' in pool_text
    assert re.search(r'hp .* precise 1 4 1 0 0 0 4 builds paused ovh', pool_text)

    # Failure rates: the outlier is marked, with the figure it is compared to.
    figures = stats.compute(db, config, days=status_page.STATS_DAYS, now=NOW)
    assert [(c.provider, c.label) for c in figures.outliers] == [('rax', 'precise')]
    rax = figures.cell('rax', 'precise')
    assert 'outlier: rax precise fails %s of gate runs' % stats.percent(rax.gate.failure_rate) \
        in text
    rates = text[text.index('id="rates"'):text.index('id="images"')]
    assert rates.count('<span class="outlier">outlier</span>') == 1
    rax_row = re.search(r'<tr><td>rax</td><td>precise</td>.*?</tr>', rates).group(0)
    assert 'class="outlier"' in rax_row
    assert '%s of %d' % (stats.percent(rax.compared_to), rax.compared_runs) in rax_row
    assert 'error 6 (' in rax_row and 'no-network 3 (' in rax_row
    hp_row = re.search(r'<tr><td>hp</td><td>precise</td>.*?</tr>', rates).group(0)
    assert '<span class="ok">ok</span>' in hp_row and 'quota 3 (' in hp_row

    # Images: current, previous and the demoted one; the deleted one is not shown.
    images = text_of(text[text.index('id="images"'):text.index('id="held"')])
    assert re.search(r'rax precise current dg-precise-rax-20130901T100000Z ready 2d', images)
    assert re.search(r'rax precise previous dg-precise-rax-20130831T100000Z ready 3d', images)
    assert re.search(r'rax precise demoted dg-precise-rax-20130902T100000Z ready 1d', images)
    assert re.search(r'rax precise building dg-precise-rax-20130903T110000Z building 1h', images)
    assert '20130830T100000Z' not in images       # the deleted row
    assert re.search(r'hp precise current dg-precise-hp-20130902T160000Z ready 20h', images)
    assert re.search(r'hp precise previous dg-precise-hp-20130901T160000Z ready 1d', images)

    # Held nodes with their reasons and expiry, soonest first.
    held = text_of(text[text.index('id="held"'):text.index('id="switches"')])
    assert re.search(r'dg-precise-ovh-\d+ ovh precise 198\.51\.100\.\d+ jeblair '
                     r'debugging nova-network 2013-09-03 14:00 UTC in 2h', held)
    assert re.search(r'dg-precise-rax-\d+ rax precise .* #812 ' + re.escape(HELD_REASON)
                     + r' 2013-09-04 08:00 UTC in 20h', held)
    assert held.index('jeblair') < held.index('#812')

    # Disabled labels and paused builds, from the configuration and the database.
    switches = text_of(text[text.index('id="switches"'):])
    assert 'raring config - - devstack does not support raring yet' in switches
    assert 'quantal rax config - - paused' in switches
    assert 'precise hp database clarkb 2013-09-03 09:00 UTC ' + PAUSE_REASON in switches

    # The charts are there, and say what the ready history is.
    assert text.count('<svg') >= 2 + len(figures.cells)
    assert 'reconstructed from the launch history' in text


def test_ready_history_and_runs_by_hour_are_exact(tmp_path, sqlite_url):
    db = vmdatabase.Database(sqlite_url).upgrade()
    now = NOW

    def tx(s):
        used = s.create_node('rax', 'precise', now=now - 10 * HOUR)
        s.transition(used, 'used', now=now - 5 * HOUR)
        ready = s.create_node('rax', 'precise', now=now - 3 * HOUR)
        s.transition(ready, 'ready', now=now - 2 * HOUR)
        old = s.create_node('hp', 'precise', state='ready', now=now - 30 * HOUR)
        s.record_launch('rax', 'precise', used.id, 'ready', None, 300, now - 9 * HOUR)
        s.record_launch('rax', 'precise', ready.id, 'ready', None, 300, now - 2 * HOUR)
        # Reaped unused: counts for max-ready-hours (1 h here) at most.
        s.record_launch('rax', 'precise', 999, 'ready', None, 300, now - 20 * HOUR)
        # Claimed by a gate run, then reaped.
        s.record_launch('hp', 'precise', 998, 'ready', None, 300, now - 8 * HOUR)
        s.create_result(now=now - 7 * HOUR, provider='hp', label='precise', node_id=998,
                        result='running')
        s.record_launch('hp', 'precise', 997, 'failed', 'error', 30, now - 8 * HOUR)
        s.record_launch('hp', 'precise', 996, 'used', None, 300, now - 8 * HOUR)   # a canary
        return old
    old = db.transact(tx)
    nodes, launches, results = db.transact(
        lambda s: (s.nodes(), s.launches(), s.results_between(0)))

    series = status_page.ready_history(nodes, launches, results, now, max_ready_hours=1,
                                       hours=24, step=HOUR)
    rax = dict((round((now - t) / HOUR), v) for t, v in series['rax'])
    hp = dict((round((now - t) / HOUR), v) for t, v in series['hp'])
    assert [rax[h] for h in range(24, -1, -1)] == (
        [0, 0, 0, 0, 1] + [0] * 10 + [1, 1, 1, 1] + [0] * 3 + [1, 1, 1])
    assert [hp[h] for h in range(24, -1, -1)] == [1] * 16 + [2] + [1] * 8
    assert old.state == 'ready'

    def runs(s):
        for offset, result in [(0.1, 'success'), (0.5, 'success'), (0.7, 'failure'),
                               (3.2, 'timeout'),
                               (23.5, 'aborted'), (30, 'success')]:
            row = s.create_result(now=now - offset * HOUR, provider='rax', label='precise')
            s.finish_result(row.id, result, now=now)
    db.transact(runs)
    buckets = status_page.runs_by_hour(db.transact(lambda s: s.results_between(now - DAY)),
                                       now - 0.25 * HOUR)
    assert len(buckets) == 24 and buckets[-1][0] == now - HOUR
    counts = {round((now - start) / HOUR): dict(c) for start, c in buckets if c}
    assert counts == {1: {'success': 1, 'failure': 1}, 4: {'timeout': 1},
                      24: {'aborted': 1}, 7: {'running': 1}}     # not the one after `now`


def test_an_empty_pool_renders_read_only(tmp_path, sqlite_url):
    vmdatabase.Database(sqlite_url).upgrade()
    db = vmdatabase.Database(sqlite_url, read_only=True)
    text = status_page.render(db, make_config(tmp_path, sqlite_url), now=NOW)
    assert 'No gate runs started in the last 24 hours.' in text
    assert 'No node is held.' in text and 'No images yet.' in text
    assert text.endswith('</html>\n')


# -- in a real browser ----------------------------------------------------------------

BROWSER_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
                 '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync',
                 '--host-resolver-rules=MAP * ~NOTFOUND', '--enable-logging=stderr', '--v=0']


def chromium():
    """Debian's chromium, or fail (CI) / skip (elsewhere) naming the package."""
    for name in ('chromium', 'chromium-browser'):
        path = shutil.which(name)
        if path:
            return path
    message = 'no chromium: apt-get install chromium (./dev.sh test installs it)'
    if os.environ.get('CI') == 'true':
        pytest.fail(message)
    pytest.skip(message)


def run_browser(binary, tmp_dir, url, *action, timeout=60):
    profile = os.path.join(str(tmp_dir), 'chromium-profile')
    return subprocess.run([binary, *BROWSER_FLAGS, '--user-data-dir=' + profile, *action, url],
                          capture_output=True, text=True, timeout=timeout)


def screenshot(binary, html_path, png_path, tmp_dir, size=(1280, 1600)):
    """Open the page, save a screenshot; returns the browser's console lines."""
    proc = run_browser(binary, tmp_dir, 'file://' + os.path.abspath(html_path),
                       '--screenshot=' + os.path.abspath(png_path),
                       '--window-size=%d,%d' % size)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return console_lines(proc.stderr)


def console_lines(stderr):
    return [line for line in stderr.splitlines()
            if ':CONSOLE' in line or 'Uncaught' in line]


def png_size(path):
    with open(path, 'rb') as f:
        head = f.read(24)
    assert head[:8] == b'\x89PNG\r\n\x1a\n' and head[12:16] == b'IHDR'
    return struct.unpack('>II', head[16:24])


def test_page_in_a_real_browser(tmp_path, sqlite_url):
    binary = chromium()
    db = fabricate(vmdatabase.Database(sqlite_url).upgrade())
    page_path = tmp_path / 'status.html'
    page_path.write_text(status_page.render(db, make_config(tmp_path, sqlite_url), now=NOW),
                         encoding='utf-8')
    png = tmp_path / 'status.png'

    errors = screenshot(binary, page_path, png, tmp_path)

    assert errors == []
    assert png_size(png) == (1280, 1600)
    assert png.stat().st_size > 30000         # a drawn page, not a blank one
    dom = run_browser(binary, tmp_path, 'file://%s' % page_path, '--dump-dom')
    assert dom.returncode == 0 and console_lines(dom.stderr) == []
    for section in ('pool', 'history', 'rates', 'images', 'held', 'switches'):
        assert 'id="%s"' % section in dom.stdout
    assert dom.stdout.count('<svg') >= 8
    assert '<script' not in dom.stdout and html.escape(HELD_REASON, quote=False) in dom.stdout

    # The console check sees errors when there are some.
    bad = tmp_path / 'bad.html'
    bad.write_text('<!DOCTYPE html><p>x</p><script>throw new Error("probe")</script>')
    proc = run_browser(binary, tmp_path, 'file://%s' % bad, '--dump-dom')
    assert any('Uncaught Error: probe' in line for line in console_lines(proc.stderr))
