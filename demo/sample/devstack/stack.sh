#!/usr/bin/env bash
# A stand-in for devstack's stack.sh in the demo's sample project: it checks the
# local.conf the gate wrote and "installs" from the package cache the nightly
# image holds (~/cache, made by demo/cache-packages.sh), so a gate run needs no
# package mirror.  Its logs go to ../logs, which the gate copies back.
set -euo pipefail

logs=../logs
cache=$HOME/cache/packages.txt
mkdir -p "$logs"
if ! grep -q '^RECLONE=no$' local.conf; then
    echo "stack.sh: local.conf was not written by devstack-vm-gate.sh"
    exit 1
fi
if [[ ! -s "$cache" ]]; then
    echo "stack.sh: no package cache at $cache: this node was not booted from a demo image"
    exit 1
fi
echo "stack.sh: installing $(wc -l <"$cache") packages from the image's cache (~/cache/packages.txt); no mirror needed"
while read -r name version; do
    echo "installed $name $version from the cache"
done <"$cache" >"$logs/install.txt"
echo "stack.sh: keystone, nova and glance started" | tee "$logs/stack.sh.log"
