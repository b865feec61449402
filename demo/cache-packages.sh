#!/usr/bin/env bash
# The demo image's setup script: devstack-vm-update-image.py runs it on the
# template VM before the snapshot, as it runs node-setup/prepare-node.sh for a
# real image.  It "caches" a few packages: a list in ~/cache/packages.txt that
# every node booted from the image then has.  The demo's ready check, the
# canary's validate command and the sample project's stack.sh all read it.
set -euo pipefail

cache=$HOME/cache
packages=(
    mysql-server=5.5.28
    rabbitmq-server=2.7.1
    python-pip=1.0
    libvirt-bin=0.9.8
    qemu-kvm=1.0
    apache2=2.2.22
)

mkdir -p "$cache"
: >"$cache/packages.txt.new"
for entry in "${packages[@]}"; do
    name=${entry%%=*}
    version=${entry#*=}
    printf '%s %s\n' "$name" "$version" >>"$cache/packages.txt.new"
    echo "cached $name $version"
done
mv "$cache/packages.txt.new" "$cache/packages.txt"
echo "$(wc -l <"$cache/packages.txt") packages cached in \$HOME/cache/packages.txt"
