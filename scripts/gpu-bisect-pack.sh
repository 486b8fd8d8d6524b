#!/usr/bin/env bash
# Builds here, for a list of commits, the ds4-cuda GPU test binary into .device-bisect/ (git-ignored,
# ~27 MB, kept apart from .device so ordinary device calls do not carry it). Only when a GPU test
# fails: device run `bash scripts/gpu-check.sh bisect` with carry [".device", ".device-bisect"]
# runs the golden-tiny decode test of each, oldest first, so a commit that broke decode shows up as
# the first FAIL (and the batched-prefill gate at the PREFILL_COMMITS). Default commits: session 2's validated tree,
# then each later commit that changed an always-on decode kernel.
#   COMMITS="a b c" bash scripts/gpu-bisect-pack.sh
set -euo pipefail
cd "$(dirname "$0")/.."
COMMITS=${COMMITS:-"b737bc0 0c0ca7f af6c837 32607fa 6070a34 645af47 HEAD"}
# the batched prefill's only always-on change since b737bc0 is 0c0ca7f's top-k digit search
PREFILL_COMMITS=${PREFILL_COMMITS:-"b737bc0 0c0ca7f"}
export DS4_REQUIRE_NVCC=1
wt=/tmp/ds4-bisect-tree
[ -d $wt ] || git worktree add -f --detach $wt HEAD >/dev/null
rm -rf .device-bisect
mkdir -p .device-bisect/bisect
for c in $COMMITS; do
    rev=$(git rev-parse --short "$c")
    (cd $wt && git checkout -q --detach "$rev" &&
        CARGO_TARGET_DIR=/tmp/ds4-bisect-target cargo test --profile ci -p ds4-cuda --test gpu --no-run 2>&1 |
        tee /tmp/ds4-bisect-$rev.log | tail -1)
    f=$(grep -oE "target/ci/deps/gpu-[0-9a-f]+" /tmp/ds4-bisect-$rev.log | tail -1)
    strip -o .device-bisect/bisect/gpu-$rev "/tmp/ds4-bisect-$f"
    echo "$rev" >>.device-bisect/bisect/order
done
for c in $PREFILL_COMMITS; do
    rev=$(git rev-parse --short "$c")
    (cd $wt && git checkout -q --detach "$rev" &&
        CARGO_TARGET_DIR=/tmp/ds4-bisect-target cargo test --profile ci -p ds4-cuda --test prefill --no-run 2>&1 |
        tee /tmp/ds4-bisect-pf-$rev.log | tail -1)
    f=$(grep -oE "target/ci/deps/prefill-[0-9a-f]+" /tmp/ds4-bisect-pf-$rev.log | tail -1)
    strip -o .device-bisect/bisect/prefill-$rev "/tmp/ds4-bisect-$f"
    echo "$rev" >>.device-bisect/bisect/order-prefill
done
(cd .device-bisect && tar cf - bisect | xz -T0 -3 >bisect.tar.xz && rm -rf bisect)
du -sh .device-bisect
