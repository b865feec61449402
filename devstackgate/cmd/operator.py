"""devstack-gate: operators' and developers' tools, one subcommand each.

    devstack-gate list [--provider P] [--label L] [--state S]
    devstack-gate image-list [--provider P] [--label L]
    devstack-gate hold NODE --reason TEXT [--hours N]
    devstack-gate release NODE
    devstack-gate delete NODE [--now]
    devstack-gate image-demote PROVIDER LABEL
    devstack-gate image-delete PROVIDER LABEL
    devstack-gate image-pause LABEL [--provider P] [--reason TEXT]
    devstack-gate image-unpause LABEL [--provider P]
    devstack-gate label-disable LABEL --reason TEXT
    devstack-gate label-enable LABEL
    devstack-gate quarantine PROVIDER LABEL --reason TEXT [--probe-after-minutes N]
    devstack-gate quarantine-release PROVIDER LABEL
    devstack-gate quarantine-list [--provider P] [--label L]
    devstack-gate image-guard-undo PROVIDER LABEL
    devstack-gate stats [--days N]
    devstack-gate status-page OUT.html
    devstack-gate give NODE --key FILE|TEXT
    devstack-gate snapshot NODE

Every subcommand reads the configuration the stages read (--config or
$DEVSTACK_GATE_CONFIG; clouds.yaml only for ``delete --now`` and ``snapshot``) and prints a
table no wider than 80 columns on stdout, or with --json a JSON list or object.
What changed is logged on stderr, one timestamped line each.  The logic lives
in :mod:`devstackgate.operator`.
"""

import argparse
import json
import sys
import textwrap
import time

import prettytable

import vmdatabase
from devstackgate import config as configmod
from devstackgate import log as console
from devstackgate import operator, stats, status_page
from devstackgate.cmd import common

PROG = 'devstack-gate'
WIDTH = 80
MIN_WRAPPED = 8     # a wrapped column is not squeezed narrower than this

try:
    from wcwidth import wcswidth as _wcswidth     # what prettytable measures with
except ImportError:     # pragma: no cover
    _wcswidth = len


def _width(text):
    """Terminal columns of the widest line (a control character counts as one)."""
    widths = [_wcswidth(line) for line in text.split('\n')]
    return max(len(line) if w < 0 else w for line, w in zip(text.split('\n'), widths))


def render(headers, rows, wrap=(), width=WIDTH, right=('ID',)):
    """A bordered table of `rows` no wider than `width` columns.

    Columns in `wrap` (long text: names, reasons; a mapping gives each a weight,
    the share of the width it keeps) are wrapped first, the widest for its
    weight first; only if that is not enough are the others wrapped too, down
    to their header's width.  An empty cell shows as "-".
    """
    weights = dict(wrap) if isinstance(wrap, dict) else dict.fromkeys(wrap, 1)
    cells = [['-' if c is None or c == '' else str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [_width(row[i]) for row in cells]) for i, h in enumerate(headers)]
    budget = width - (3 * len(headers) + 1)
    for floors in ([max(len(h), MIN_WRAPPED) if h in weights else widths[i]
                    for i, h in enumerate(headers)],
                   [len(h) for h in headers]):
        while sum(widths) > budget:
            shrinkable = [i for i in range(len(headers)) if widths[i] > floors[i]]
            if not shrinkable:
                break
            widest = max(shrinkable, key=lambda i: widths[i] / weights.get(headers[i], 1))
            widths[widest] -= 1
    table = prettytable.PrettyTable(headers)
    table.align = 'l'
    for h in right:
        if h in headers:
            table.align[h] = 'r'
    for h, w in zip(headers, widths):
        table.max_width[h] = w
    for row in cells:
        table.add_row(row)
    return table.get_string()


# -- what each table shows ------------------------------------------------------------

# A node has more to show than 80 columns hold in one line, so pairs share a cell
# (two lines per node), and the hold details of held nodes get a table of their own.
NODE_HEADERS = ['ID', 'Provider/Label', 'State/Age', 'Name/IP', 'Image']
NODE_WRAP = ('Name/IP', 'Image')
HOLD_HEADERS = ['ID', 'Name', 'Expires', 'Held by', 'Reason']
HOLD_WRAP = {'Held by': 1, 'Reason': 2}
IMAGE_HEADERS = ['ID', 'Provider', 'Label', 'Name', 'State', 'Age', 'Role']
IMAGE_WRAP = {'Name': 2, 'Role': 1}
SWITCH_HEADERS = ['Label', 'Provider', 'Switch', 'Set in', 'By', 'Age', 'Reason']
SWITCH_WRAP = {'Label': 1, 'By': 1, 'Reason': 3}


def _pair(first, second):
    return '%s\n%s' % (first or '-', second or '-')


def expires_text(until, now):
    """'in 23h' or '2h ago' for a hold's expiry."""
    if until is None:
        return 'after hold-hours'
    if until > now:
        return 'in %s' % operator.age_text(until - now)
    return '%s ago' % operator.age_text(now - until)


def nodes_table(nodes, now):
    """The nodes table, then (if any node is held) the held nodes' expiry, holder and reason."""
    text = render(NODE_HEADERS, [
        [n['id'], _pair(n['provider'], n['label']), _pair(n['state'], operator.age_text(n['age'])),
         _pair(n['name'], n['ip']), n['image']] for n in nodes], wrap=NODE_WRAP)
    held = [n for n in nodes if n['state'] == 'hold']
    if held:
        text += '\nHeld nodes:\n' + render(HOLD_HEADERS, [
            [n['id'], n['name'], expires_text(n['hold_until'], now), n['held_by'],
             n['hold_reason']] for n in held], wrap=HOLD_WRAP)
    return text


def images_table(images):
    def role(i):
        if i['state'] == 'ready':
            if i['demoted']:        # by an operator, or by the image guard with its figures
                return 'demoted' + (' (%s)' % i['fail_reason'] if i['fail_reason'] else '')
            return i['role'] or 'kept'
        return i['fail_reason'] or ''
    return render(IMAGE_HEADERS, [
        [i['id'], i['provider'], i['label'], i['name'], i['state'],
         operator.age_text(i['age']), role(i)] for i in images], wrap=IMAGE_WRAP)


def switches_table(paused=(), disabled=()):
    rows = [[p['label'], p['provider'] or 'all', 'paused', p['set_in'], p['set_by'],
             operator.age_text(p['age']) if p['age'] is not None else '', p['reason']]
            for p in paused]
    rows += [[d['label'], 'all', 'disabled', d['set_in'], d['set_by'],
              operator.age_text(d['age']) if d['age'] is not None else '', d['reason']]
             for d in disabled]
    return render(SWITCH_HEADERS, rows, wrap=SWITCH_WRAP)


# -- the subcommands: (data for --json, table, problem or None) ------------------------

def cmd_list(args, config, db, now):
    nodes = operator.list_nodes(db, config, args.provider, args.label, args.state, now=now)
    text = nodes_table(nodes, now)
    # What stops launches or builds of these labels is part of the picture.
    paused = operator.paused(db, config, args.provider, args.label, now)
    disabled = operator.disabled(db, config, args.provider, args.label, now)
    if paused or disabled:
        text += '\nPaused and disabled labels:\n' + switches_table(paused, disabled)
    return nodes, text, None


def cmd_image_list(args, config, db, now):
    data = operator.image_list(db, config, args.provider, args.label, now=now)
    text = images_table(data['images'])
    if data['paused'] or data['disabled']:
        text += '\nPaused and disabled labels:\n' + switches_table(data['paused'],
                                                                  data['disabled'])
    else:
        text += '\nNo label is paused or disabled.'
    return data, text, None


def cmd_hold(args, config, db, now):
    node = operator.find_node(db, args.node)
    data = operator.hold(db, config, node, args.reason, hours=args.hours, now=now)
    return data, nodes_table([data['node']], now), None


def cmd_release(args, config, db, now):
    data = operator.release(db, operator.find_node(db, args.node), now=now)
    return data, nodes_table([data['node']], now), None


def cmd_delete(args, config, db, now):
    data = operator.delete(db, operator.find_node(db, args.node), now=now)
    problem = None
    if args.now:
        node = db.transact(lambda s: s.get_node(data['node']['id']))
        ok, what = operator.delete_server(config, node)
        data['cloud'] = {'ok': ok, 'detail': what}
        if not ok:
            problem = 'node %s: marked delete, but %s' % (operator.describe(node), what)
        else:
            operator.log.info('node %s: %s', operator.describe(node), what)
    return data, nodes_table([data['node']], now), problem


def cmd_image_demote(args, config, db, now):
    data = operator.image_demote(db, config, args.provider, args.label, now=now)
    return data, images_table(data['images']), None


def cmd_image_delete(args, config, db, now):
    data = operator.image_delete(db, config, args.provider, args.label, now=now)
    return data, images_table(data['images']), None


def cmd_image_pause(args, config, db, now):
    data = operator.image_pause(db, config, args.label, args.provider, reason=args.reason,
                                now=now)
    return data, switches_table(paused=data['paused']), None


def cmd_image_unpause(args, config, db, now):
    data = operator.image_unpause(db, config, args.label, args.provider, now=now)
    return data, switches_table(paused=data['paused']), None


def cmd_label_disable(args, config, db, now):
    data = operator.label_disable(db, config, args.label, args.reason, now=now)
    return data, switches_table(disabled=data['disabled']), None


def cmd_label_enable(args, config, db, now):
    data = operator.label_enable(db, config, args.label, now=now)
    return data, switches_table(disabled=data['disabled']), None


QUARANTINE_HEADERS = ['Provider/Label', 'Since', 'By', 'Probe', 'Reason']


def quarantines_table(rows, now):
    if not rows:
        return 'No provider is quarantined.'
    return render(QUARANTINE_HEADERS, [
        [_pair(q['provider'], q['label']), operator.age_text(q['age']), q['set_by'],
         'never (until released)' if q['probe_after'] is None
         else console.utc(q['probe_after']), q['reason']] for q in rows],
        wrap={'Reason': 3})


def cmd_quarantine(args, config, db, now):
    data = operator.quarantine(db, config, args.provider, args.label, args.reason,
                               probe_minutes=args.probe_after_minutes, now=now)
    return data, quarantines_table(data['quarantines'], now), None


def cmd_quarantine_release(args, config, db, now):
    data = operator.quarantine_release(db, config, args.provider, args.label, now=now)
    return data, quarantines_table(data['quarantines'], now), None


def cmd_quarantine_list(args, config, db, now):
    rows = operator.quarantines(db, config, args.provider, args.label, now=now)
    return rows, quarantines_table(rows, now), None


def cmd_image_guard_undo(args, config, db, now):
    data = operator.image_guard_undo(db, config, args.provider, args.label, now=now)
    return data, images_table(data['images']), None


def _quarantine_args(p):
    _provider_label_args(p)
    p.add_argument('--reason', metavar='TEXT', required=True,
                   help='why, shown by quarantine-list and stats')
    p.add_argument('--probe-after-minutes', metavar='N', type=float,
                   help='probe it with a canary node after N minutes and end it if the canary '
                        'stays up (default: until quarantine-release)')


def _percent(rate):
    return '-' if rate is None else '%.0f%%' % (100 * rate)


def _minutes(seconds):
    return '-' if seconds is None else operator.age_text(seconds)


STATS_HEADERS = ['Provider/Label', 'Runs', 'Fail', 'Median', 'Boots', 'Boot fail', 'Ready',
                 'Verdict']


def cmd_stats(args, config, db, now):
    figures = stats.compute(db, config, days=args.days, now=now)
    rows = []
    for c in figures.cells:
        g, l = c.gate, c.launch
        failed = '%s\n%d t/o' % (_percent(g.failure_rate), g.timeouts)
        reasons = ', '.join('%s %d' % kv for kv in sorted(l.reasons.items())) or '-'
        judgement = ('OUTLIER: %s vs %s' % (_percent(g.failure_rate), _percent(c.compared_to))
                     if c.outlier else ('ok' if c.judged else 'too few runs'))
        if c.quarantined:
            judgement += '\nQUARANTINED'
        elif c.infra_outlier:
            judgement += '\nINFRA: %d' % g.infra
        rows.append([_pair(c.provider, c.label), g.runs, failed, _minutes(g.median_seconds),
                     l.launches, '%s\n%s' % (_percent(l.failure_rate), reasons),
                     _minutes(l.median_seconds_to_ready), judgement])
    text = render(STATS_HEADERS, rows, wrap={'Boot fail': 2, 'Verdict': 2})
    text += '\n' + textwrap.fill(
        'Last %g day(s).  Fail: gate runs that failed or timed out (t/o); Boots: launches, '
        'Ready: their median time to ready.  OUTLIER: a provider whose gate failure rate, '
        'over at least %d runs and %d failures, is higher than that of the other providers '
        'of the label by more than luck explains (two-proportion z-test, p <= %g); INFRA: '
        'the same of its infra failures; QUARANTINED: fetch takes its nodes last.'
        % (figures.days, figures.min_runs, figures.min_failures, figures.alpha),
        WIDTH)
    sized = [c.sizing['line'] for c in figures.cells if c.sizing]
    if sized:
        text += '\n\nDemand sizing now (rate, lead time, target):\n' + '\n'.join(
            textwrap.fill(line, WIDTH, subsequent_indent='  ') for line in sized)
    return figures.to_dict(), text, None


def cmd_status_page(args, config, db, now):
    html = status_page.render(db, config, now=now)
    common.write_atomically(args.output, html)
    operator.log.info('status page written to %s (%d bytes)', args.output, len(html))
    return {'output': args.output, 'bytes': len(html)}, 'wrote %s' % args.output, None


def cmd_give(args, config, db, now):
    data = operator.give(db, config, operator.find_node(db, args.node), args.key, now=now)
    text = '\n'.join([
        'Node %s: key %s of %s added for %s.' % (
            data['node']['name'], data['fingerprint'], data['given_to'],
            data['node']['username']),
        'Save its host key (pinned when the node was checked) to %s:'
        % data['known_hosts_file'],
        '',
        '  %s' % data['known_hosts_line'],
        '',
        'then connect with:',
        '',
        '  %s' % data['ssh_command']])
    return data, text, None


def cmd_snapshot(args, config, db, now):
    data = operator.snapshot(db, config, operator.find_node(db, args.node), now=now)
    image = data['image']
    text = '\n'.join([
        'Snapshot of node %s on provider %s:' % (data['node']['name'], data['provider']),
        '',
        '  image id: %s' % image['id'],
        '  name:     %s (%s)' % (image['name'], image['state']),
        '',
        'Boot it in your own account (once it is shared with you) by this id.  The reaper',
        'deletes it after %s (snapshot-keep-hours %g).' % (
            console.utc(data['keep_until']), data['keep_hours'])])
    return data, text, None


def _give_args(p):
    _node_arg(p)
    p.add_argument('--key', metavar='FILE|TEXT', required=True,
                   help="the developer's public key: a .pub file or its one line of text")


def _node_arg(p):
    p.add_argument('node', metavar='NODE', help='a node id or a node name')


def _provider_label_args(p):
    p.add_argument('provider', metavar='PROVIDER', help='provider name from the configuration')
    p.add_argument('label', metavar='LABEL', help='a label the provider offers')


def _filters(p, state=False):
    p.add_argument('--provider', metavar='P', help='only this provider')
    p.add_argument('--label', metavar='L', help='only this label')
    if state:
        p.add_argument('--state', metavar='S', choices=vmdatabase.NODE_STATES,
                       help='only this state: %s' % ', '.join(vmdatabase.NODE_STATES))


def _hold_args(p):
    _node_arg(p)
    p.add_argument('--reason', metavar='TEXT', required=True,
                   help='why, shown by list (for example the bug being debugged)')
    p.add_argument('--hours', metavar='N', type=float,
                   help='how long the reaper keeps it (default: hold-hours of the '
                        'configuration)')


def _delete_args(p):
    _node_arg(p)
    p.add_argument('--now', action='store_true',
                   help='also ask the cloud to delete the server now (needs clouds.yaml); '
                        'otherwise the next reap does')


def _pause_args(p, reason=True):
    p.add_argument('label', metavar='LABEL', help='a label from the configuration')
    p.add_argument('--provider', metavar='P', help='only on this provider (default: all)')
    if reason:
        p.add_argument('--reason', metavar='TEXT', help='why, shown by image-list')


def _disable_args(p, reason=True):
    p.add_argument('label', metavar='LABEL', help='a label from the configuration')
    if reason:
        p.add_argument('--reason', metavar='TEXT', required=True,
                       help='why, shown by image-list and in gate consoles')


def _stats_args(p):
    p.add_argument('--days', metavar='N', type=float, default=7,
                   help='the window, in days (default: %(default)s)')


def _status_page_args(p):
    p.add_argument('output', metavar='OUT.html',
                   help='where to write the page (atomically), for Jenkins to publish')


# name, handler, writes, arguments, help
COMMANDS = (
    ('list', cmd_list, False, lambda p: _filters(p, state=True),
     'nodes: id, provider, label, state, age in state, name, ip, image, hold'),
    ('image-list', cmd_image_list, False, _filters,
     'images per provider and label (current, previous, demoted), and the paused and '
     'disabled labels'),
    ('hold', cmd_hold, True, _hold_args,
     'hold a ready, used or held node for diagnosis: the reaper keeps it until it expires'),
    ('release', cmd_release, True, _node_arg,
     'a held node goes to delete; the reaper deletes its server'),
    ('delete', cmd_delete, True, _delete_args,
     'mark a node delete (with --now, also ask the cloud now)'),
    ('image-demote', cmd_image_demote, True, _provider_label_args,
     'demote the current image: the previous ready one becomes current, for good'),
    ('image-delete', cmd_image_delete, True, _provider_label_args,
     'the current image goes to delete: the previous ready one becomes current; the reaper '
     'deletes it from the cloud'),
    ('image-pause', cmd_image_pause, True, _pause_args,
     'stop image builds of a label (launches go on from the current image)'),
    ('image-unpause', cmd_image_unpause, True, lambda p: _pause_args(p, reason=False),
     'let image builds of a label run again'),
    ('label-disable', cmd_label_disable, True, _disable_args,
     'switch a label off: not launched, not built, skipped by gate runs'),
    ('label-enable', cmd_label_enable, True, lambda p: _disable_args(p, reason=False),
     'switch a label back on'),
    ('quarantine', cmd_quarantine, True, _quarantine_args,
     "quarantine a provider's label: fetch takes its nodes only when no other provider has "
     'one ready, launch stops topping it up'),
    ('quarantine-release', cmd_quarantine_release, True, _provider_label_args,
     'end a quarantine (set by hand or by provider health)'),
    ('quarantine-list', cmd_quarantine_list, False, _filters,
     'the quarantines in force, who set them, why (the figures) and when they are probed'),
    ('image-guard-undo', cmd_image_guard_undo, True, _provider_label_args,
     "undo the image guard: the image it demoted is current again, its label's builds run "
     'again, and the guard leaves it alone'),
    ('stats', cmd_stats, False, _stats_args,
     'per provider and label: gate runs, failure rate, launch failures by reason, time to '
     'ready; the providers whose failure rate stands out'),
    ('status-page', cmd_status_page, False, _status_page_args,
     'write one self-contained HTML page of the pool, its history, failure rates, images '
     'and held nodes'),
    ('give', cmd_give, True, _give_args,
     "add a developer's public key to a held node of a giftable provider (over SSH, its "
     'host key pinned) and print how to connect'),
    ('snapshot', cmd_snapshot, True, _node_arg,
     'snapshot a held node for a developer to boot elsewhere; the reaper deletes the image '
     'after snapshot-keep-hours'),
)


def parser():
    p = common.parser(PROG, "Operators' and developers' tools over the pool's database: "
                      "nodes, images, holds, bad image days.  Each COMMAND has --help.")
    # The common options also after the command (devstack-gate list --config X); SUPPRESS
    # keeps a value given before it.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument('--config', metavar='PATH', default=argparse.SUPPRESS,
                        help='configuration file (default: $%s, else %s)'
                        % (configmod.CONFIG_ENV, ' or '.join(configmod.DEFAULT_CONFIG_PATHS)))
    shared.add_argument('-v', '--verbose', action='store_true', default=argparse.SUPPRESS,
                        help='log debug lines too')
    shared.add_argument('--json', action='store_true',
                        help='print JSON on stdout (for scripts) instead of a table')
    sub = p.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name, handler, writes, arguments, text in COMMANDS:
        sp = sub.add_parser(name, parents=[shared], help=text, description=text[0].upper()
                            + text[1:] + '.')
        arguments(sp)
        sp.set_defaults(handler=handler, writes=writes)
    return p


def main(argv=None):
    def body(args, config):
        db = operator.open_database(config, write=args.writes)
        now = time.time()
        data, text, problem = args.handler(args, config, db, now)
        if args.json:
            print(json.dumps(data, indent=2, sort_keys=True))
        else:
            print(text)
        sys.stdout.flush()
        if problem:
            print('%s: %s' % (PROG, problem), file=sys.stderr)
            return common.EXIT_FAILED
        return common.EXIT_OK

    return common.run(PROG, parser(), argv, body, check_clouds=False)


if __name__ == '__main__':
    sys.exit(main())
