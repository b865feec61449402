"""Labels that are switched off or paused: what stops launches, builds or gate runs.

A label (a matrix cell) is *disabled* in the configuration (``disabled-labels:
{LABEL: reason}``) or at run time in the database (``devstack-gate
label-disable``): it is not launched and not built, and a gate run over
several cells tests only the enabled ones, naming the skipped cells and why.

A label's image builds are *paused* in the configuration (``paused: true``,
per provider) or at run time in the database (``devstack-gate image-pause``,
for one provider or all): builds stop, launches go on from the current image.

These are the one reader of both: the stages ask :func:`disabled` and
:func:`paused` for ``{label: why}``; the operator's tables and the status page
take the rows (:func:`disabled_rows`, :func:`paused_rows`).  Without a
database only the configuration's switches count (a dry run opens none).
"""

from devstackgate import log


def disabled_rows(config, db=None):
    """[{label, set_in ('config' or 'database'), path, reason, set_by, since}], by label."""
    rows = [{'label': name, 'set_in': 'config', 'path': config.path, 'reason': why,
             'set_by': None, 'since': None}
            for name, why in sorted(config.disabled_labels.items())]
    switches = db.transact(lambda s: s.label_switches()) if db is not None else {}
    rows += [{'label': name, 'set_in': 'database', 'path': None, 'reason': switch.reason,
              'set_by': switch.set_by, 'since': switch.since}
             for name, switch in sorted(switches.items())]
    return rows


def paused_rows(config, db=None, label=None):
    """[{label, provider (None: all), set_in, path, reason, set_by, since, id}]."""
    rows = [{'label': im.name, 'provider': p.name, 'set_in': 'config', 'path': config.path,
             'reason': 'paused: true', 'set_by': None, 'since': None, 'id': None}
            for p in config.providers for im in p.images
            if im.paused and label in (None, im.name)]
    pauses = db.transact(lambda s: s.image_pauses(label=label)) if db is not None else []
    rows += [{'label': pause.label, 'provider': pause.provider, 'set_in': 'database',
              'path': None, 'reason': pause.reason, 'set_by': pause.set_by,
              'since': pause.since, 'id': pause.id} for pause in pauses]
    return rows


def disabled(config, db=None):
    """{label: why} for every label switched off, in the configuration or the database."""
    off = {}
    for row in disabled_rows(config, db):
        if row['set_in'] == 'config':
            why = 'disabled in %s: %s' % (row['path'], row['reason'])
        else:
            why = 'disabled%s since %s: %s' % (_by(row), log.utc(row['since']), row['reason'])
        off.setdefault(row['label'], why)
    return off


def paused(config, provider, db=None):
    """{label: why} for the labels of `provider` whose image builds are paused: in the
    configuration, or in the database for this provider or for all of them."""
    offered = {image.name for image in provider.images}
    off = {}
    for row in paused_rows(config, db):
        if row['label'] not in offered or row['provider'] not in (None, provider.name):
            continue
        if row['set_in'] == 'config':
            why = 'paused'
        else:
            why = 'paused%s since %s%s%s' % (
                _by(row), log.utc(row['since']), '' if row['provider'] else ' for all providers',
                ': %s' % row['reason'] if row['reason'] else '')
        off.setdefault(row['label'], why)
    return off


def _by(row):
    return ' by %s' % row['set_by'] if row['set_by'] else ''
