#!/usr/bin/env bash
# baremetal-setup.sh: turn a freshly installed bare-metal host into a kexec/LVM test host.
#
# Run once, as root, just after the operating system is installed (the
# "Using Kexec and LVM to Quickly Run OpenStack Integration Tests" set-up):
#   - install kexec-tools if `kexec` is not on PATH;
#   - enable kexec: LOAD_KEXEC=true in /etc/default/kexec (the line is
#     rewritten, or appended when the file has none);
#   - rename the root LV to the pristine name (VG/ROOT -> VG/PRISTINE);
#   - create a copy-on-write snapshot of the pristine LV under the root LV's
#     name, which the bootloader and fstab still mount (they must name the
#     root by its LV path, /dev/VG/ROOT or /dev/mapper/VG-ROOT, not by UUID:
#     the snapshot has the origin's UUID); if that fails the rename is undone;
#   - reboot into the snapshot (unless --no-reboot).
# Afterwards baremetal-reset.sh resets the host after each test.
#
# Before changing anything: VG/ROOT must exist, and if VG/PRISTINE already
# exists the host is already set up and nothing is changed (exit 0).
#
# Options (defaults in brackets):
#   --vg NAME               volume group [main]
#   --root-lv NAME          the LV the host boots from [root]
#   --pristine-lv NAME      the new name of the installed root LV [orig_root]
#   --snapshot-size SIZE    copy-on-write space of the snapshot, as lvcreate -L [20G]
#   --kexec-defaults FILE   kexec-tools' defaults file [/etc/default/kexec]
#   --no-reboot             leave the reboot to the caller (/ stays the pristine LV until then)
#   --dry-run               print every command, one per line ("+ " and shell-quoted),
#                           and run none; assumes a fresh host (VG/ROOT exists,
#                           VG/PRISTINE does not, kexec is not installed, the
#                           defaults file has a LOAD_KEXEC= line once it is)
#   -h, --help              this text
#
# Exit status: 0 done or already set up, 1 a check or step failed (one line
# on stderr names it), 2 bad input, an unknown option or not run as root.
set -euo pipefail

PROG=baremetal-setup.sh
VG=main
ROOT_LV=root
PRISTINE_LV=orig_root
SNAPSHOT_SIZE=20G
KEXEC_DEFAULTS=/etc/default/kexec
REBOOT=1
DRY_RUN=0

usage() {
    cat <<'USAGE'
usage: baremetal-setup.sh [options]

One-time set-up of a bare-metal test host, as root, after the OS install:
install kexec-tools, enable kexec, rename the root LV to the pristine name,
snapshot it under the root LV's name, reboot.

  --vg NAME              volume group [main]
  --root-lv NAME         root logical volume [root]
  --pristine-lv NAME     pristine (renamed) root [orig_root]
  --snapshot-size SIZE   snapshot size, as lvcreate -L [20G]
  --kexec-defaults FILE  [/etc/default/kexec]
  --no-reboot            do not reboot at the end
  --dry-run              print every command, run none
  -h, --help             this text

Exit status: 0 done or already set up, 1 a step failed, 2 bad input or not root.
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
        --no-reboot | --dry-run)
            ((!has_value)) || die 2 "$opt: takes no value"
            case $opt in
                --no-reboot) REBOOT=0 ;;
                --dry-run) DRY_RUN=1 ;;
            esac
            ;;
        --vg | --root-lv | --pristine-lv | --snapshot-size | --kexec-defaults)
            if ((!has_value)); then
                (($# >= 2)) || die 2 "$opt: needs a value (see --help)"
                value=$2
                shift
            fi
            case $opt in
                --vg) VG=$value ;;
                --root-lv) ROOT_LV=$value ;;
                --pristine-lv) PRISTINE_LV=$value ;;
                --snapshot-size) SNAPSHOT_SIZE=$value ;;
                --kexec-defaults) KEXEC_DEFAULTS=$value ;;
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
[[ $PRISTINE_LV != "$ROOT_LV" ]] || die 2 "--pristine-lv: must differ from --root-lv ($(q "$ROOT_LV"))"
need_size --snapshot-size "$SNAPSHOT_SIZE"
need_path --kexec-defaults "$KEXEC_DEFAULTS"

if ((!DRY_RUN)) && [[ $(id -u) != 0 ]]; then
    die 2 "must run as root (or use --dry-run)"
fi

ROOT=$VG/$ROOT_LV
PRISTINE=$VG/$PRISTINE_LV

if ! check yes lvs "$ROOT"; then
    die 1 "$ROOT: no such logical volume (\`lvs $(q "$ROOT")\` failed); nothing changed"
fi
if check no lvs "$PRISTINE"; then
    say "$PRISTINE exists: this host is already set up; nothing changed"
    exit 0
fi

if ! check no command -v kexec; then
    say "installing kexec-tools"
    run "install kexec-tools" env DEBIAN_FRONTEND=noninteractive apt-get install -y kexec-tools
fi

# LOAD_KEXEC=true: kexec-tools makes every reboot a kexec.
if check yes grep -q '^LOAD_KEXEC=' "$KEXEC_DEFAULTS"; then
    run "enable kexec" sed -i 's/^LOAD_KEXEC=.*/LOAD_KEXEC=true/' "$KEXEC_DEFAULTS"
else
    # Appended by the shell (after a newline if the file's last line lacks one).
    append=(printf '%s\n' LOAD_KEXEC=true)
    if ((!DRY_RUN)) && [[ -s $KEXEC_DEFAULTS ]]; then
        content=
        IFS= read -r -d '' content <"$KEXEC_DEFAULTS" || true
        if [[ -n $content && $content != *$'\n' ]]; then append=(printf '%s\n' '' LOAD_KEXEC=true); fi
    fi
    printf '+ %s >> %s\n' "$(q "${append[@]}")" "$(q "$KEXEC_DEFAULTS")"
    if ((!DRY_RUN)); then
        if ! err=$( { "${append[@]}" >>"$KEXEC_DEFAULTS"; } 2>&1); then
            die 1 "enable kexec failed: cannot append to $(q "$KEXEC_DEFAULTS")${err:+: $(last_line "$err")}"
        fi
    fi
fi

say "renaming $ROOT to $PRISTINE and snapshotting it as $ROOT"
run "rename the root LV to the pristine name" lvrename "$VG" "$ROOT_LV" "$PRISTINE_LV"
attempt lvcreate -L "$SNAPSHOT_SIZE" -s -n "$ROOT_LV" "$PRISTINE"
if ((STATUS != 0)); then
    message=$(failure "create the snapshot" lvcreate -L "$SNAPSHOT_SIZE" -s -n "$ROOT_LV" "$PRISTINE")
    attempt lvrename "$VG" "$PRISTINE_LV" "$ROOT_LV"
    if ((STATUS == 0)); then
        die 1 "$message; rolled back ($PRISTINE renamed to $ROOT)"
    fi
    die 1 "$message; the rollback failed too ($(failure "rename" lvrename "$VG" "$PRISTINE_LV" "$ROOT_LV")): rename $PRISTINE to $ROOT by hand before rebooting"
fi

if ((REBOOT)); then
    say "rebooting into the snapshot"
    run "reboot" reboot
else
    say "not rebooting (--no-reboot): reboot before the first test; until then / is $PRISTINE"
fi
exit 0
