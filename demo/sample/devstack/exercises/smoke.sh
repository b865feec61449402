#!/usr/bin/env bash
# The sample project's first exercise.
set -euo pipefail
echo "smoke.sh: keystone, nova and glance answer"
