#!/usr/bin/env bash
# Builds here everything scripts/gpu-check.sh runs on the GPU machine and packs it into .device/
# (git-ignored; the device tool carries it: carry [".device"], 64 MiB at most): the CLI binaries,
# the ds4-cuda GPU test binaries, the dense-kernel microbenchmark, the golden tiny-s777 data the
# tests read, the shared tools and the gguf wheel synth_gguf.py needs (the GPU machine is offline).
# BASE_REV=<commit>: also build that revision's ds4-bench (in a worktree) as ds4-bench-base, so the
# GPU run times the baseline on the same machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export DS4_REQUIRE_NVCC=1
cargo build --profile ci -p ds4-cli --bins
cargo test --profile ci -p ds4-cuda --no-run 2>&1 | tee /tmp/ds4-testbins.txt | tail -1
rm -rf .device
mkdir -p .device/bin .device/shared/golden/tiny-s777 .device/shared/tools .device/whl
for b in ds4 ds4-bench; do strip -o .device/bin/$b target/ci/$b; done
if [ -n "${BASE_REV:-}" ]; then
    wt=/tmp/ds4-base-tree
    [ -d $wt ] || git worktree add -f $wt "$BASE_REV" >/dev/null
    (cd $wt && git checkout -q --detach "$BASE_REV" &&
        CARGO_TARGET_DIR=/tmp/ds4-base-target cargo build --profile ci -p ds4-cli --bin ds4-bench)
    strip -o .device/bin/ds4-bench-base /tmp/ds4-base-target/ci/ds4-bench
fi
for t in gpu experts prefill; do
    f=$(grep -oE "target/ci/deps/$t-[0-9a-f]+" /tmp/ds4-testbins.txt | tail -1)
    strip -o .device/bin/$t "$f"
done
NV=$(python3 -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")/nvidia/cu13
"$NV/bin/nvcc" -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Icrates/ds4-cuda/kernels \
    -I"$NV/include" -L"$NV/lib" crates/ds4-cuda/microbench/dense_tma.cu -o .device/bin/mb
(cd .device && tar cf - bin | xz -T0 -3 >bin.tar.xz && rm -rf bin)
G=../shared/golden/tiny-s777
cp $G/meta.json $G/tokens.i32 $G/tokens.json $G/logits_model_f64.f32 $G/layers_model_f64.* \
    .device/shared/golden/tiny-s777/
cp ../shared/tools/*.py .device/shared/tools/
python3 -m pip download -q --no-deps -d .device/whl gguf==0.19.0
du -sh .device
