"""python -m bench [--profile short|full] [--only NAME ...] [--json PATH]

Runs the benchmarks, prints one table and writes it as JSON with the machine's
cores, Python version and database versions.  Exit 0 when every benchmark ran
(a missed goal is reported, MISSED in the table, not an error; --strict makes
it exit 3), 1 when one failed to run, 2 for bad arguments.
"""

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
import traceback

from bench import common

#: Every benchmark module, in the order of the table.
BENCHMARKS = ('handout', 'launch', 'reap', 'image', 'dbscale', 'health', 'sizing')
#: Run only when named with --only (installs and runs other software).
ON_DEMAND = ('nodepool',)


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench', description=__doc__.split('\n\n')[1])
    p.add_argument('--profile', choices=common.PROFILES, default='full',
                   help='full: the figures (minutes); short: seconds, as the test suite runs it')
    p.add_argument('--only', action='append', choices=BENCHMARKS + ON_DEMAND, metavar='NAME',
                   help='run only this benchmark (repeatable): %s; on demand only: %s'
                   % (', '.join(BENCHMARKS), ', '.join(ON_DEMAND)))
    p.add_argument('--json', default=None, metavar='PATH',
                   help='where to write the JSON (default: bench-results-PROFILE.json here)')
    p.add_argument('--strict', action='store_true', help='exit 3 when a goal is missed')
    args = p.parse_args(argv)
    path = args.json or 'bench-results-%s.json' % args.profile
    workdir = tempfile.mkdtemp(prefix='devstack-gate-bench.')
    ctx = common.Context(profile=args.profile, workdir=workdir,
                         mysql_server=common.mysql_server())
    if ctx.mysql_server is None:
        say('no MariaDB/MySQL server at $%s: measuring SQLite only' % common.MYSQL_ENV)
    rows, errors = [], []
    try:
        for name in args.only or BENCHMARKS:
            module = importlib.import_module('bench.' + name)
            say('%s: running (%s profile)' % (name, ctx.profile))
            started = time.perf_counter()
            try:
                got = module.run(ctx)
            except Exception as e:  # one broken benchmark must not lose the others' figures
                errors.append({'bench': name, 'error': '%s: %s' % (type(e).__name__, e),
                               'traceback': traceback.format_exc()})
                say('%s: FAILED: %s: %s' % (name, type(e).__name__, e))
                continue
            rows.extend(got)
            say('%s: %d figures in %.1f s' % (name, len(got), time.perf_counter() - started))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(common.table(rows))
    data = common.write_json(path, ctx, rows, errors)
    missed = data['goals']['missed']
    say('%d figures, %d goals checked, %d missed; JSON in %s'
        % (len(rows), data['goals']['checked'], missed, os.path.abspath(path)))
    if errors:
        return 1
    return 3 if (args.strict and missed) else 0


def say(msg):
    print('%s bench: %s' % (time.strftime('%Y-%m-%d %H:%M:%S'), msg), file=sys.stderr, flush=True)


if __name__ == '__main__':
    sys.exit(main())
