#!/usr/bin/env bash
# What the tests need beyond the main install (the README's test command; .ci/run runs it):
# the Debian packages of requirements/apt.txt where this user can install them (root, or
# sudo without a password), else one line naming them (the tests that need them skip and
# say so); then requirements/test.txt into the active environment.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t wanted < <(grep -v '^\s*\(#\|$\)' requirements/apt.txt)
missing=()
for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(no); fi
  if [ "${as_root[0]:-}" != no ] && command -v apt-get >/dev/null; then
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup-tests: not installed: ${missing[*]} (apt-get install them as root); the tests that need them skip and say so" >&2
  fi
fi
pip install -q -r requirements/test.txt -c requirements/cpu-lock.txt 2>&1 | grep -v '^WARNING: Location' || true
