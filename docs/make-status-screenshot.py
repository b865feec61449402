#!/usr/bin/env python3
"""Render the status page of the test suite's sample pool and screenshot it in headless
chromium: docs/status-page.png (and, with --html PATH, the page itself).

    .venv/bin/python docs/make-status-screenshot.py [--output docs/status-page.png]

Needs Debian's chromium (apt-get install chromium).  The sample is the fabricated
database of tests/test_status_page.py: three providers, rax failing 40% of its gate
runs, nodes in every state, images current, previous and demoted, held nodes.
"""

import argparse
import os
import pathlib
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import vmdatabase  # noqa: E402
from devstackgate import status_page  # noqa: E402
from tests import test_status_page as sample  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--output', default=os.path.join(HERE, 'status-page.png'))
    parser.add_argument('--html', help='also keep the page here')
    parser.add_argument('--size', default='1280,2700', help='window WIDTH,HEIGHT')
    args = parser.parse_args(argv)
    binary = next(filter(None, map(shutil.which, ('chromium', 'chromium-browser'))), None)
    if binary is None:
        sys.exit('make-status-screenshot: no chromium; apt-get install chromium')
    with tempfile.TemporaryDirectory() as tmp:
        url = 'sqlite:///%s' % os.path.join(tmp, 'sample.db')
        db = sample.fabricate(vmdatabase.Database(url).upgrade())
        config = sample.make_config(pathlib.Path(tmp), url)
        page = status_page.render(db, config, now=sample.NOW)
        html_path = args.html or os.path.join(tmp, 'status.html')
        with open(html_path, 'w', encoding='utf-8') as f:
            f.write(page)
        width, height = (int(n) for n in args.size.split(','))
        errors = sample.screenshot(binary, html_path, args.output, tmp, size=(width, height))
    if errors:
        sys.exit('make-status-screenshot: the page logged: %s' % '; '.join(errors))
    print('wrote %s (%d bytes)' % (args.output, os.path.getsize(args.output)))


if __name__ == '__main__':
    main()
