"""Labels that are switched off: matrix cells known red on the day.

A label is disabled in the configuration (``disabled-labels: {LABEL: reason}``)
or at run time in the database (``Session.disable_label``), without editing
the configuration.  A disabled label is not launched and not built, and a gate
run over several cells tests only the enabled ones, naming the skipped cells
and why.
"""


from devstackgate import log


def disabled(config, db=None):
    """{label: why} for every label switched off, in the configuration or (given a
    database) at run time."""
    off = {label: 'disabled in %s: %s' % (config.path, why)
           for label, why in config.disabled_labels.items()}
    switches = db.transact(lambda s: s.label_switches()) if db is not None else {}
    for label, switch in switches.items():
        off.setdefault(label, 'disabled%s since %s: %s' % (
            ' by %s' % switch.set_by if switch.set_by else '', log.utc(switch.since),
            switch.reason))
    return off

