"""node-setup/baremetal-setup.sh and baremetal-reset.sh: the kexec/LVM bare-metal host scripts.

Dry runs are compared line by line with the expected commands.  Real runs go
against stub commands first on PATH (lvs, lvcreate, lvremove, lvrename, kexec,
apt-get, reboot, nohup, setsid, id): each appends its argv, shell-quoted, to a
log file and exits as the environment tells it (STUB_LVS: the VG/LV names
`lvs` finds; STUB_FAIL_<name>: the numbers of that stub's calls that fail;
STUB_UID: what `id -u` prints).
"""

import os
import shlex
import stat
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, 'node-setup', 'baremetal-setup.sh')
RESET = os.path.join(ROOT, 'node-setup', 'baremetal-reset.sh')

STUB = r'''#!/bin/bash
name=${0##*/}
{ printf '%s' "$name"; for arg; do printf ' %q' "$arg"; done; printf '\n'; } >>"$STUB_LOG"
case $name in
    id) echo "${STUB_UID:-0}"; exit 0 ;;
    lvs)
        for lv in ${STUB_LVS:-}; do
            if [[ $1 == "$lv" ]]; then echo "  LV $lv"; exit 0; fi
        done
        echo "  Failed to find logical volume \"$1\"" >&2
        exit 5 ;;
    nohup | setsid) exec "$@" ;;
esac
count=$(grep -c "^$name\( \|$\)" "$STUB_LOG")
fail=STUB_FAIL_${name//-/_}
for n in ${!fail:-}; do
    if [[ $n == "$count" ]]; then
        echo "  $name: something went wrong" >&2
        echo "  $name: simulated failure of call $count" >&2
        exit 5
    fi
done
exit 0
'''
STUB_NAMES = ['lvs', 'lvcreate', 'lvremove', 'lvrename', 'kexec', 'apt-get', 'reboot',
              'nohup', 'setsid', 'id']

# The value with spaces and quotes that proves the dry run's quoting.
CMDLINE = 'BOOT_IMAGE=/vmlinuz-6.1 root=/dev/mapper/vg0-lv_root ro console="ttyS0,115200 n8" note=it\'s'
CMDLINE_QUOTED = (r'--append=BOOT_IMAGE=/vmlinuz-6.1\ root=/dev/mapper/vg0-lv_root\ ro\ '
                  r'console=\"ttyS0\,115200\ n8\"\ note=it\'s')


class Host:
    """A temporary PATH of stubs and their call log."""

    def __init__(self, tmp_path, kexec=True):
        self.dir = tmp_path
        self.bin = tmp_path / 'bin'
        self.bin.mkdir()
        self.log = tmp_path / 'calls.log'
        for name in STUB_NAMES:
            if name == 'kexec' and not kexec:
                continue
            path = self.bin / name
            path.write_text(STUB)
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
        self.env = {'PATH': '%s:/usr/bin:/bin' % self.bin, 'STUB_LOG': str(self.log),
                    'LC_ALL': 'C', 'HOME': str(tmp_path)}
        self.kernel = tmp_path / 'vmlinuz'
        self.initrd = tmp_path / 'initrd.img'
        self.kernel.write_text('kernel')
        self.initrd.write_text('initrd')
        self.cmdline = tmp_path / 'cmdline'
        self.cmdline.write_text(CMDLINE + '\n')
        self.defaults = tmp_path / 'kexec'
        self.defaults.write_text('# Defaults for kexec initscript\nLOAD_KEXEC=false\nUSE_GRUB_CONFIG=false\n')

    def run(self, script, *args, **env):
        full = dict(self.env, **{k: str(v) for k, v in env.items()})
        return subprocess.run([script, *args], env=full, capture_output=True, text=True, timeout=20)

    def calls(self):
        if not self.log.exists():
            return []
        return [shlex.split(line) for line in self.log.read_text().splitlines()]

    def wait_for(self, call, timeout=5.0):
        deadline = time.monotonic() + timeout
        while call not in self.calls():
            if time.monotonic() > deadline:
                raise AssertionError('%r was not called within %ss: %r' % (call, timeout, self.calls()))
            time.sleep(0.02)

    def reset_args(self, *extra):
        return ['--kernel', str(self.kernel), '--initrd', str(self.initrd),
                '--cmdline-file', str(self.cmdline), '--delay', '0', *extra]


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def dry_lines(host, script, *args):
    proc = host.run(script, '--dry-run', *args, STUB_UID=1000)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ''
    assert host.calls() == [], 'a dry run ran commands'
    return proc.stdout.splitlines()


# -- dry runs -----------------------------------------------------------------------------------

def test_setup_dry_run_defaults(host):
    assert dry_lines(host, SETUP) == [
        '+ lvs main/root',
        '+ lvs main/orig_root',
        '+ command -v kexec',
        '+ env DEBIAN_FRONTEND=noninteractive apt-get install -y kexec-tools',
        r'+ grep -q \^LOAD_KEXEC= /etc/default/kexec',
        r'+ sed -i s/\^LOAD_KEXEC=.\*/LOAD_KEXEC=true/ /etc/default/kexec',
        '+ lvrename main root orig_root',
        '+ lvcreate -L 20G -s -n root main/orig_root',
        '+ reboot',
    ]


def test_setup_dry_run_every_option(host):
    assert dry_lines(host, SETUP, '--vg', 'vg0', '--root-lv=lv_root', '--pristine-lv', 'clean.root',
                     '--snapshot-size', '1.5T', '--kexec-defaults', '/etc/my defaults/kexec',
                     '--no-reboot') == [
        '+ lvs vg0/lv_root',
        '+ lvs vg0/clean.root',
        '+ command -v kexec',
        '+ env DEBIAN_FRONTEND=noninteractive apt-get install -y kexec-tools',
        r'+ grep -q \^LOAD_KEXEC= /etc/my\ defaults/kexec',
        r'+ sed -i s/\^LOAD_KEXEC=.\*/LOAD_KEXEC=true/ /etc/my\ defaults/kexec',
        '+ lvrename vg0 lv_root clean.root',
        '+ lvcreate -L 1.5T -s -n lv_root vg0/clean.root',
    ]


def test_reset_dry_run_defaults(host):
    with open('/proc/cmdline') as f:
        cmdline = f.read().rstrip('\n')
    lines = dry_lines(host, RESET)
    assert lines[:6] + lines[7:] == [
        '+ lvs main/last_root',
        '+ lvremove -f main/last_root',
        '+ lvs main/root_new',
        '+ lvcreate -L 20G -s -n root_new main/orig_root',
        '+ lvrename main root last_root',
        '+ lvrename main root_new root',
        r'+ nohup setsid bash -c sleep\ \"\$1\"\;\ kexec\ -e _ 2 </dev/null >/dev/null 2>&1 &',
    ]
    assert lines[6].startswith('+ kexec -l /vmlinuz --initrd=/initrd.img --append=')
    assert shlex.split(lines[6][2:]) == ['kexec', '-l', '/vmlinuz', '--initrd=/initrd.img',
                                         '--append=' + cmdline]


def test_reset_dry_run_every_option(host):
    lines = dry_lines(host, RESET, '--vg', 'vg0', '--root-lv', 'lv_root', '--pristine-lv', 'clean',
                      '--last-lv', 'prev', '--snapshot-size', '512m', '--kernel', '/boot/vmlinuz-6.1',
                      '--initrd=/boot/initrd img', '--cmdline-file', str(host.cmdline), '--delay', '0.5')
    assert lines == [
        '+ lvs vg0/prev',
        '+ lvremove -f vg0/prev',
        '+ lvs vg0/lv_root_new',
        '+ lvcreate -L 512m -s -n lv_root_new vg0/clean',
        '+ lvrename vg0 lv_root prev',
        '+ lvrename vg0 lv_root_new lv_root',
        r'+ kexec -l /boot/vmlinuz-6.1 --initrd=/boot/initrd\ img ' + CMDLINE_QUOTED,
        r'+ nohup setsid bash -c sleep\ \"\$1\"\;\ kexec\ -e _ 0.5 </dev/null >/dev/null 2>&1 &',
    ]
    # Exactly re-runnable: the printed kexec line, run by a shell, passes the same argv.
    rerun = subprocess.run(['bash', '-c', lines[6][2:]], env=host.env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert host.calls() == [['kexec', '-l', '/boot/vmlinuz-6.1', '--initrd=/boot/initrd img',
                             '--append=' + CMDLINE]]


def test_reset_dry_run_reboot_reads_no_cmdline(host):
    lines = dry_lines(host, RESET, '--reboot', '--cmdline-file', str(host.dir / 'missing'))
    assert lines[-2:] == [
        '+ lvrename main root_new root',
        r'+ nohup setsid bash -c sleep\ \"\$1\"\;\ reboot _ 2 </dev/null >/dev/null 2>&1 &',
    ]
    assert not any('kexec' in line for line in lines)


def test_reset_dry_run_cmdline_file_is_read(host):
    proc = host.run(RESET, '--dry-run', '--cmdline-file', str(host.dir / 'missing'))
    assert proc.returncode == 1
    assert proc.stdout == ''
    assert proc.stderr == 'baremetal-reset.sh: --cmdline-file: %s is not a readable file; nothing changed\n' % (
        host.dir / 'missing')


@pytest.mark.parametrize('script', [SETUP, RESET])
def test_help(host, script):
    proc = host.run(script, '--help')
    assert proc.returncode == 0
    assert proc.stdout.startswith('usage: %s [options]' % os.path.basename(script))
    assert '--dry-run' in proc.stdout and '--vg NAME' in proc.stdout
    assert host.calls() == []


# -- bad input ----------------------------------------------------------------------------------

COMMON_BAD = [
    (['--vg', '-main'], '--vg'),
    (['--vg', 'ma in'], '--vg'),
    (['--vg', 'main/root'], '--vg'),
    (['--vg', ''], '--vg'),
    (['--vg'], '--vg'),
    (['--root-lv', 'r$oot'], '--root-lv'),
    (['--root-lv', '..'], '--root-lv'),
    (['--pristine-lv', "it's"], '--pristine-lv'),
    (['--pristine-lv', 'root'], '--pristine-lv'),
    (['--snapshot-size', '20X'], '--snapshot-size'),
    (['--snapshot-size', '-20G'], '--snapshot-size'),
    (['--snapshot-size', '1.G'], '--snapshot-size'),
    (['--snapshot-size='], '--snapshot-size'),
    (['--dry-run=yes'], '--dry-run'),
    (['--bogus'], '--bogus'),
    (['extra'], 'extra'),
]
SETUP_BAD = COMMON_BAD + [
    (['--kexec-defaults', ''], '--kexec-defaults'),
    (['--kexec-defaults', '-f'], '--kexec-defaults'),
    (['--no-reboot=1'], '--no-reboot'),
]
RESET_BAD = COMMON_BAD + [
    (['--last-lv', '-x'], '--last-lv'),
    (['--last-lv', 'root'], '--last-lv'),
    (['--last-lv', 'orig_root'], '--last-lv'),
    (['--last-lv', 'root_new'], '--last-lv'),
    (['--pristine-lv', 'root_new'], '--pristine-lv'),
    (['--kernel', ''], '--kernel'),
    (['--initrd', '--dry-run'], '--initrd'),
    (['--cmdline-file', '-'], '--cmdline-file'),
    (['--delay', '-1'], '--delay'),
    (['--delay', 'soon'], '--delay'),
    (['--delay', '1.5.5'], '--delay'),
    (['--delay', ''], '--delay'),
    (['--reboot=now'], '--reboot'),
]


def check_bad(host, script, args, option):
    proc = host.run(script, *args)
    assert proc.returncode == 2, proc
    assert proc.stdout == ''
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('%s: %s: ' % (os.path.basename(script), option)), lines[0]
    assert host.calls() == [], 'commands ran on bad input'


@pytest.mark.parametrize('args,option', SETUP_BAD, ids=[' '.join(a) or 'empty' for a, _ in SETUP_BAD])
def test_setup_bad_input(host, args, option):
    check_bad(host, SETUP, args, option)


@pytest.mark.parametrize('args,option', RESET_BAD, ids=[' '.join(a) or 'empty' for a, _ in RESET_BAD])
def test_reset_bad_input(host, args, option):
    check_bad(host, RESET, host.reset_args() + args, option)


def test_bad_value_with_a_newline_stays_one_line(host):
    check_bad(host, SETUP, ['--vg', 'a\nb'], '--vg')


@pytest.mark.parametrize('script', [SETUP, RESET])
def test_not_root(host, script):
    proc = host.run(script, *(host.reset_args() if script == RESET else []), STUB_UID=1000)
    assert proc.returncode == 2
    assert proc.stderr == '%s: must run as root (or use --dry-run)\n' % os.path.basename(script)
    assert host.calls() == [['id', '-u']]


# -- setup, real runs against stubs -------------------------------------------------------------

def test_setup_fresh_host(tmp_path):
    host = Host(tmp_path, kexec=False)
    proc = host.run(SETUP, '--kexec-defaults', str(host.defaults), STUB_LVS='main/root')
    assert proc.returncode == 0, proc.stderr
    assert host.calls() == [
        ['id', '-u'],
        ['lvs', 'main/root'],
        ['lvs', 'main/orig_root'],
        ['apt-get', 'install', '-y', 'kexec-tools'],
        ['lvrename', 'main', 'root', 'orig_root'],
        ['lvcreate', '-L', '20G', '-s', '-n', 'root', 'main/orig_root'],
        ['reboot'],
    ]
    assert host.defaults.read_text() == (
        '# Defaults for kexec initscript\nLOAD_KEXEC=true\nUSE_GRUB_CONFIG=false\n')
    assert '+ lvrename main root orig_root\n' in proc.stdout


@pytest.mark.parametrize('before,after', [
    ('USE_GRUB_CONFIG=false\n', 'USE_GRUB_CONFIG=false\nLOAD_KEXEC=true\n'),
    ('USE_GRUB_CONFIG=false', 'USE_GRUB_CONFIG=false\nLOAD_KEXEC=true\n'),
    ('', 'LOAD_KEXEC=true\n'),
    (None, 'LOAD_KEXEC=true\n'),
], ids=['no-line', 'no-final-newline', 'empty', 'missing'])
def test_setup_kexec_installed_appends_load_kexec(host, before, after):
    if before is None:
        host.defaults.unlink()
    else:
        host.defaults.write_text(before)
    proc = host.run(SETUP, '--vg', 'vg0', '--root-lv', 'lv', '--pristine-lv', 'pristine',
                    '--snapshot-size', '5g', '--kexec-defaults', str(host.defaults), '--no-reboot',
                    STUB_LVS='vg0/lv')
    assert proc.returncode == 0, proc.stderr
    assert host.calls() == [
        ['id', '-u'],
        ['lvs', 'vg0/lv'],
        ['lvs', 'vg0/pristine'],
        ['lvrename', 'vg0', 'lv', 'pristine'],
        ['lvcreate', '-L', '5g', '-s', '-n', 'lv', 'vg0/pristine'],
    ]
    assert host.defaults.read_text() == after


def test_setup_already_set_up_changes_nothing(host):
    before = host.defaults.read_text()
    proc = host.run(SETUP, '--kexec-defaults', str(host.defaults), STUB_LVS='main/root main/orig_root')
    assert proc.returncode == 0, proc.stderr
    assert host.calls() == [['id', '-u'], ['lvs', 'main/root'], ['lvs', 'main/orig_root']]
    assert 'already set up' in proc.stdout
    assert host.defaults.read_text() == before


def test_setup_without_root_lv_fails_before_changing_anything(host):
    proc = host.run(SETUP, '--kexec-defaults', str(host.defaults), STUB_LVS='')
    assert proc.returncode == 1
    assert proc.stderr == ('baremetal-setup.sh: main/root: no such logical volume '
                           '(`lvs main/root` failed); nothing changed\n')
    assert host.calls() == [['id', '-u'], ['lvs', 'main/root']]


def test_setup_failed_install_stops(tmp_path):
    host = Host(tmp_path, kexec=False)
    proc = host.run(SETUP, '--kexec-defaults', str(host.defaults), STUB_LVS='main/root',
                    STUB_FAIL_apt_get='1')
    assert proc.returncode == 1
    assert proc.stderr == ('baremetal-setup.sh: install kexec-tools failed: `env DEBIAN_FRONTEND=noninteractive '
                           'apt-get install -y kexec-tools` exited 5: '
                           'apt-get: simulated failure of call 1\n')
    assert host.calls()[-1] == ['apt-get', 'install', '-y', 'kexec-tools']
    assert 'LOAD_KEXEC=false' in host.defaults.read_text()


@pytest.mark.parametrize('rollback_fails', [False, True])
def test_setup_failed_snapshot_is_rolled_back(host, rollback_fails):
    proc = host.run(SETUP, '--kexec-defaults', str(host.defaults), STUB_LVS='main/root',
                    STUB_FAIL_lvcreate='1', STUB_FAIL_lvrename='2' if rollback_fails else '')
    assert proc.returncode == 1
    assert host.calls()[3:] == [
        ['lvrename', 'main', 'root', 'orig_root'],
        ['lvcreate', '-L', '20G', '-s', '-n', 'root', 'main/orig_root'],
        ['lvrename', 'main', 'orig_root', 'root'],
    ]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('baremetal-setup.sh: create the snapshot failed: '
                               '`lvcreate -L 20G -s -n root main/orig_root` exited 5: ')
    if rollback_fails:
        assert lines[0].endswith('rename main/orig_root to main/root by hand before rebooting')
    else:
        assert lines[0].endswith('; rolled back (main/orig_root renamed to main/root)')


# -- reset, real runs against stubs -------------------------------------------------------------

RESET_LVM = [
    ['lvs', 'main/last_root'],
    ['lvremove', '-f', 'main/last_root'],
    ['lvs', 'main/root_new'],
    ['lvcreate', '-L', '20G', '-s', '-n', 'root_new', 'main/orig_root'],
    ['lvrename', 'main', 'root', 'last_root'],
    ['lvrename', 'main', 'root_new', 'root'],
]
LVS = 'main/root main/orig_root main/last_root'


def test_reset_order_and_detached_kexec(host):
    args = host.reset_args()
    args[args.index('--delay') + 1] = '2'
    start = time.monotonic()
    proc = host.run(RESET, *args, STUB_LVS=LVS)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert took < 2, 'the script waited for the kexec'
    # Exited before kexec -e: the caller's SSH session can close first.
    assert ['kexec', '-e'] not in host.calls()
    host.wait_for(['kexec', '-e'])
    assert host.calls() == [['id', '-u']] + RESET_LVM + [
        ['kexec', '-l', str(host.kernel), '--initrd=%s' % host.initrd, '--append=' + CMDLINE],
        ['nohup', 'setsid', 'bash', '-c', 'sleep "$1"; kexec -e', '_', '2'],
        ['setsid', 'bash', '-c', 'sleep "$1"; kexec -e', '_', '2'],
        ['kexec', '-e'],
    ]


def test_reset_first_time_with_a_stale_new_snapshot(host):
    proc = host.run(RESET, *host.reset_args('--reboot'), STUB_LVS='main/root main/orig_root main/root_new')
    assert proc.returncode == 0, proc.stderr
    host.wait_for(['reboot'])
    assert host.calls() == [
        ['id', '-u'],
        ['lvs', 'main/last_root'],
        ['lvs', 'main/root_new'],
        ['lvremove', '-f', 'main/root_new'],
        ['lvcreate', '-L', '20G', '-s', '-n', 'root_new', 'main/orig_root'],
        ['lvrename', 'main', 'root', 'last_root'],
        ['lvrename', 'main', 'root_new', 'root'],
        ['nohup', 'setsid', 'bash', '-c', 'sleep "$1"; reboot', '_', '0'],
        ['setsid', 'bash', '-c', 'sleep "$1"; reboot', '_', '0'],
        ['reboot'],
    ]


@pytest.mark.parametrize('rollback_fails', [False, True])
def test_reset_failed_swap_is_rolled_back(host, rollback_fails):
    proc = host.run(RESET, *host.reset_args(), STUB_LVS=LVS,
                    STUB_FAIL_lvrename='2 3' if rollback_fails else '2')
    assert proc.returncode == 1
    assert host.calls() == [['id', '-u']] + RESET_LVM + [['lvrename', 'main', 'last_root', 'root']]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('baremetal-reset.sh: make the new snapshot the root failed: '
                               '`lvrename main root_new root` exited 5: lvrename: simulated failure of call 2')
    if rollback_fails:
        assert lines[0].endswith('rename main/last_root to main/root by hand')
    else:
        assert lines[0].endswith('; rolled back (main/last_root renamed to main/root)')


@pytest.mark.parametrize('stub,failing,calls', [
    ('lvremove', '1', 3),
    ('lvcreate', '1', 5),
    ('lvrename', '1', 6),
    ('kexec', '1', 8),
])
def test_reset_failed_step_stops_there(host, stub, failing, calls):
    proc = host.run(RESET, *host.reset_args(), STUB_LVS=LVS, **{'STUB_FAIL_' + stub: failing})
    assert proc.returncode == 1
    expected = ([['id', '-u']] + RESET_LVM + [
        ['kexec', '-l', str(host.kernel), '--initrd=%s' % host.initrd, '--append=' + CMDLINE]])[:calls]
    assert host.calls() == expected
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('baremetal-reset.sh: ')
    assert lines[0].endswith('exited 5: %s: simulated failure of call %s' % (stub, failing))
    assert '`%s' % ' '.join(shlex.quote(a) for a in expected[-1][:2]) in lines[0]


@pytest.mark.parametrize('missing', ['--kernel', '--initrd', '--cmdline-file'])
def test_reset_checks_kexec_files_before_changing_anything(host, missing):
    args = host.reset_args()
    args[args.index(missing) + 1] = str(host.dir / 'nope')
    proc = host.run(RESET, *args, STUB_LVS=LVS)
    assert proc.returncode == 1
    assert proc.stderr == 'baremetal-reset.sh: %s: %s is not a readable file; nothing changed\n' % (
        missing, host.dir / 'nope')
    assert host.calls() == [['id', '-u']]
