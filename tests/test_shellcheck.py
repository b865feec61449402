"""Every shell script of the project is clean under shellcheck (./dev.sh test installs it).

That includes the files in lib/ that the scripts source (no shebang, a `shellcheck shell=`
directive instead): `shellcheck -x SCRIPT` reads what SCRIPT sources, but reports only
SCRIPT's own problems, so each lib/*.sh is checked on its own as well.
"""

import glob
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shell_scripts():
    files = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    # The sourced libraries, also before they are committed.
    libs = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'lib', '*.sh')))
    files += [name for name in libs if name not in files]
    scripts = []
    for name in files:
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path):
            continue
        with open(path, 'rb') as f:
            first = f.readline()
        if name.endswith('.sh') or first.startswith(b'#!/usr/bin/env bash') or first.startswith(b'#!/bin/bash'):
            scripts.append(name)
    return scripts


def test_there_are_scripts_to_check():
    assert {'dev.sh', '.ci/run', 'devstack-vm-update-image.sh', 'devstack-vm-gate.sh',
            'lib/retry.sh'} <= set(shell_scripts())


@pytest.mark.parametrize('script', shell_scripts())
def test_shellcheck_clean(script):
    if shutil.which('shellcheck') is None:
        if os.environ.get('CI') == 'true':
            pytest.fail('shellcheck is not installed; ./dev.sh test installs it')
        pytest.skip('shellcheck is not installed; ./dev.sh test installs it')
    proc = subprocess.run(['shellcheck', '-x', script], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
