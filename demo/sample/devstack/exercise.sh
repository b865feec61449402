#!/usr/bin/env bash
# Runs every exercises/*.sh of the sample project; the first one that fails fails the run.
set -euo pipefail

echo "exercise.sh: running the exercises"
for exercise in exercises/*.sh; do
    [[ -e "$exercise" ]] || continue
    if ! bash "$exercise"; then
        echo "exercise.sh: $exercise FAILED"
        exit 1
    fi
done
echo "exercise.sh: all exercises passed"
