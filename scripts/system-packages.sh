#!/usr/bin/env bash
# Install the system packages of scripts/system-packages.txt that are missing (only those whose
# tier is asked for: `test` for what the tests drive, `run` for what `make run` needs, `bench`
# for both and the bench-only ones).
# As root, through apt; otherwise print the one command that would do it, and fail.
set -euo pipefail
tier="${1:-test}"
list="$(dirname "$0")/system-packages.txt"
run_needs=" docker-registry "
bench_only=" wrk "

missing=()
while read -r command package _; do
    case "$command" in '' | '#'*) continue ;; esac
    if [ "$tier" = run ] && [[ "$run_needs" != *" $command "* ]]; then continue; fi
    if [ "$tier" != bench ] && [[ "$bench_only" == *" $command "* ]]; then continue; fi
    if command -v "$command" >/dev/null || [ -x "/usr/sbin/$command" ]; then continue; fi
    missing+=("$package")
done <"$list"

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them, then run this again:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
