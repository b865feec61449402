#!/usr/bin/env bash
# baremetal-reset.sh: reset a kexec/LVM bare-metal test host to its pristine OS install.
#
# Run as root (over SSH, e.g. with sudo) after each test on a host that
# baremetal-setup.sh set up.  It makes a fresh copy-on-write snapshot of the
# pristine root and boots into it with kexec, from a detached shell, so that
# the SSH session that ran it can log out first.  The order never leaves the
# host without a root LV (safer than the original recipe, which renamed the
# root away before creating its successor):
#   1. lvremove -f VG/LAST, if it exists (the snapshot before the last one);
#   2. lvcreate -L SIZE -s -n ROOT_new VG/PRISTINE (a stale ROOT_new is removed first);
#   3. lvrename VG ROOT LAST (the snapshot the host is running on);
#   4. lvrename VG ROOT_new ROOT; if this fails, LAST is renamed back to ROOT;
#   5. kexec -l KERNEL --initrd=INITRD --append="$(cat CMDLINE_FILE)";
#   6. nohup setsid bash -c 'sleep "$1"; kexec -e' _ DELAY </dev/null >/dev/null 2>&1 &
#      and exit 0 at once.
# With --reboot, steps 5 and 6 are a detached `reboot` after DELAY instead
# (a proper shutdown; with LOAD_KEXEC=true that reboot still uses kexec).
# The kernel, initrd and command line are checked before anything changes.
#
# Options (defaults in brackets):
#   --vg NAME             volume group [main]
#   --root-lv NAME        the LV the host boots from [root]
#   --pristine-lv NAME    the pristine root [orig_root]
#   --last-lv NAME        where the previous root snapshot goes [last_root]
#   --snapshot-size SIZE  copy-on-write space of the new snapshot, as lvcreate -L [20G]
#   --kernel FILE         kernel to kexec [/vmlinuz]
#   --initrd FILE         its initrd [/initrd.img]
#   --cmdline-file FILE   kernel command line to pass on [/proc/cmdline]
#   --delay SECONDS       wait before kexec -e (or reboot), for SSH to log out [2]
#   --reboot              reboot instead of kexec
#   --dry-run             print every command, one per line ("+ " and shell-quoted),
#                         and run none (the command line file is still read);
#                         assumes a host reset before: VG/LAST exists, VG/ROOT_new does not
#   -h, --help            this text
#
# Exit status: 0 the reboot is on its way, 1 a check or step failed (one
# line on stderr names it), 2 bad input, an unknown option or not run as root.
set -euo pipefail

PROG=baremetal-reset.sh
VG=main
ROOT_LV=root
PRISTINE_LV=orig_root
LAST_LV=last_root
SNAPSHOT_SIZE=20G
KERNEL=/vmlinuz
INITRD=/initrd.img
CMDLINE_FILE=/proc/cmdline
DELAY=2
REBOOT=0
DRY_RUN=0

usage() {
    cat <<'USAGE'
usage: baremetal-reset.sh [options]

Reset a bare-metal test host after a test, as root: a new snapshot of the
pristine root becomes the root LV, then a detached kexec into it.

  --vg NAME             volume group [main]
  --root-lv NAME        root logical volume [root]
  --pristine-lv NAME    pristine root [orig_root]
  --last-lv NAME        previous root snapshot [last_root]
  --snapshot-size SIZE  snapshot size, as lvcreate -L [20G]
  --kernel FILE         [/vmlinuz]
  --initrd FILE         [/initrd.img]
  --cmdline-file FILE   [/proc/cmdline]
  --delay SECONDS       before kexec -e or reboot [2]
  --reboot              a detached reboot instead of kexec
  --dry-run             print every command, run none
  -h, --help            this text

Exit status: 0 rebooting, 1 a step failed, 2 bad input or not root.
USAGE
}

# The helpers both bare-metal scripts share (die, trace, run, check, need_*).
# shellcheck source=node-setup/baremetal-lib.sh
. "$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}")")/baremetal-lib.sh"

while (($#)); do
    opt=$1
    value=
    has_value=0
    if [[ $opt == --*=* ]]; then
        value=${opt#*=}
        opt=${opt%%=*}
        has_value=1
    fi
    case $opt in
        -h | --help) usage; exit 0 ;;
        --reboot | --dry-run)
            ((!has_value)) || die 2 "$opt: takes no value"
            case $opt in
                --reboot) REBOOT=1 ;;
                --dry-run) DRY_RUN=1 ;;
            esac
            ;;
        --vg | --root-lv | --pristine-lv | --last-lv | --snapshot-size | --kernel | --initrd | \
            --cmdline-file | --delay)
            if ((!has_value)); then
                (($# >= 2)) || die 2 "$opt: needs a value (see --help)"
                value=$2
                shift
            fi
            case $opt in
                --vg) VG=$value ;;
                --root-lv) ROOT_LV=$value ;;
                --pristine-lv) PRISTINE_LV=$value ;;
                --last-lv) LAST_LV=$value ;;
                --snapshot-size) SNAPSHOT_SIZE=$value ;;
                --kernel) KERNEL=$value ;;
                --initrd) INITRD=$value ;;
                --cmdline-file) CMDLINE_FILE=$value ;;
                --delay) DELAY=$value ;;
            esac
            ;;
        -*) die 2 "$(q "$opt"): unknown option (see --help)" ;;
        *) die 2 "$(q "$opt"): unexpected argument (see --help)" ;;
    esac
    shift
done

need_name --vg "$VG" "volume group"
need_name --root-lv "$ROOT_LV" "logical volume"
need_name --pristine-lv "$PRISTINE_LV" "logical volume"
need_name --last-lv "$LAST_LV" "logical volume"
NEW_LV=${ROOT_LV}_new
[[ $PRISTINE_LV != "$ROOT_LV" ]] || die 2 "--pristine-lv: must differ from --root-lv ($(q "$ROOT_LV"))"
[[ $PRISTINE_LV != "$NEW_LV" ]] || die 2 "--pristine-lv: must differ from $(q "$NEW_LV") (the new snapshot's temporary name)"
[[ $LAST_LV != "$ROOT_LV" ]] || die 2 "--last-lv: must differ from --root-lv ($(q "$ROOT_LV"))"
[[ $LAST_LV != "$PRISTINE_LV" ]] || die 2 "--last-lv: must differ from --pristine-lv ($(q "$PRISTINE_LV"))"
[[ $LAST_LV != "$NEW_LV" ]] || die 2 "--last-lv: must differ from $(q "$NEW_LV") (the new snapshot's temporary name)"
need_size --snapshot-size "$SNAPSHOT_SIZE"
need_path --kernel "$KERNEL"
need_path --initrd "$INITRD"
need_path --cmdline-file "$CMDLINE_FILE"
if ! [[ $DELAY =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    die 2 "--delay: $(q "$DELAY") is not a non-negative number of seconds"
fi

if ((!DRY_RUN)) && [[ $(id -u) != 0 ]]; then
    die 2 "must run as root (or use --dry-run)"
fi

# What kexec needs, before anything changes (the command line file is read in a dry run too).
APPEND=
if ((!REBOOT)); then
    if [[ ! -f $CMDLINE_FILE || ! -r $CMDLINE_FILE ]]; then
        die 1 "--cmdline-file: $(q "$CMDLINE_FILE") is not a readable file; nothing changed"
    fi
    APPEND=$(<"$CMDLINE_FILE")
    APPEND=${APPEND//$'\n'/ }
    if ((!DRY_RUN)); then
        [[ -f $KERNEL && -r $KERNEL ]] || die 1 "--kernel: $(q "$KERNEL") is not a readable file; nothing changed"
        [[ -f $INITRD && -r $INITRD ]] || die 1 "--initrd: $(q "$INITRD") is not a readable file; nothing changed"
    fi
fi

ROOT=$VG/$ROOT_LV
PRISTINE=$VG/$PRISTINE_LV
LAST=$VG/$LAST_LV
NEW=$VG/$NEW_LV

# 1. The snapshot before the last one goes.
if check yes lvs "$LAST"; then
    run "remove the previous snapshot" lvremove -f "$LAST"
fi

# 2. The new snapshot, under a temporary name: the root LV stays in place meanwhile.
if check no lvs "$NEW"; then
    run "remove a stale new snapshot" lvremove -f "$NEW"
fi
run "create the new snapshot" lvcreate -L "$SNAPSHOT_SIZE" -s -n "$NEW_LV" "$PRISTINE"

# 3 and 4. The swap; a hang-up or ^C between the two renames must not leave the host without a root.
trap '' HUP INT TERM
run "move the running root aside" lvrename "$VG" "$ROOT_LV" "$LAST_LV"
attempt lvrename "$VG" "$NEW_LV" "$ROOT_LV"
if ((STATUS != 0)); then
    message=$(failure "make the new snapshot the root" lvrename "$VG" "$NEW_LV" "$ROOT_LV")
    attempt lvrename "$VG" "$LAST_LV" "$ROOT_LV"
    if ((STATUS == 0)); then
        die 1 "$message; rolled back ($LAST renamed to $ROOT)"
    fi
    die 1 "$message; the rollback failed too ($(failure "rename" lvrename "$VG" "$LAST_LV" "$ROOT_LV")): rename $LAST to $ROOT by hand"
fi
trap - HUP INT TERM

# 5 and 6. Boot into it, from a detached shell so that the caller's SSH session can close first.
if ((REBOOT)); then
    final=reboot
else
    run "load the kernel" kexec -l "$KERNEL" --initrd="$INITRD" --append="$APPEND"
    final='kexec -e'
fi
# shellcheck disable=SC2016  # $1 is the inner shell's
script='sleep "$1"; '$final
printf '+ %s </dev/null >/dev/null 2>&1 &\n' "$(q nohup setsid bash -c "$script" _ "$DELAY")"
if ((!DRY_RUN)); then
    nohup setsid bash -c "$script" _ "$DELAY" </dev/null >/dev/null 2>&1 &
    say "$ROOT is a new snapshot of $PRISTINE; ${final%% *} in $DELAY s"
fi
exit 0
