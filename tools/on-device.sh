#!/usr/bin/env bash
# The recipe every GPU-machine call uses (docs/performance.md, "How the runs are made"):
# the package bundle (tools/bundle.py) unpacked onto PYTHONPATH, the copy of the tree
# committed (dvclive asks git for a revision), then the command given, e.g.
#   tools/on-device.sh python3 -m tunelab.gpu_check --bundle bench/vendor/site.tar.xz --out $OUT/x.json
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d /tmp/site ] || tar -xJf bench/vendor/site.tar.xz -C /tmp
export PYTHONPATH="/tmp/site:$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1 DVC_NO_ANALYTICS=1
if ! git rev-parse -q --verify HEAD >/dev/null 2>&1; then
  git init -q 2>/dev/null || true
  git add -A >/dev/null 2>&1
  git -c user.name=device -c user.email=device@example.com commit -qm "device copy" >/dev/null
fi
"$@"
