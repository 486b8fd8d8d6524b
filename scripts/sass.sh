#!/usr/bin/env bash
# SASS of one kernel, and its instruction mix, without a GPU: compiles crates/ds4-cuda/kernels/<file>.cu
# for sm_90a with the pinned nvcc (build.rs's flags) and disassembles it with cuobjdump/nvdisasm
# from the NVIDIA pip wheels (13.2 reads 13.0 cubins; fetched once into /tmp/ds4-sass-tools).
#   bash scripts/sass.sh experts experts_swiglu_iq2_xxs          # instruction mix
#   FULL=1 bash scripts/sass.sh prefill pf_attention_mma32       # the whole listing
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:?kernel file (gemv, ops, attention, prefill, experts)}
fun=${2:?kernel function name}
T=/tmp/ds4-sass-tools
if [ ! -x $T/bin/cuobjdump ] || [ ! -x $T/bin/nvdisasm ]; then
    mkdir -p $T/whl $T/bin
    python3 -m pip download -q --no-deps -d $T/whl nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86
    for w in $T/whl/*.whl; do python3 -c "import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" $T/x; done
    cp $T/x/nvidia/cu13/bin/cuobjdump $T/x/nvidia/cu13/bin/nvdisasm $T/bin/ && chmod +x $T/bin/*
fi
NV=$(python3 -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")/nvidia/cu13
"$NV/bin/nvcc" -cubin -O3 -std=c++17 -ftz=false -prec-div=true -prec-sqrt=true -fmad=true -arch=sm_90a \
    -Icrates/ds4-cuda/kernels -I"$NV/include" -o /tmp/ds4-sass-$file.cubin "crates/ds4-cuda/kernels/$file.cu"
PATH=$T/bin:$PATH cuobjdump -sass -fun "$fun" /tmp/ds4-sass-$file.cubin >/tmp/ds4-sass-$fun.txt
if [ "${FULL:-0}" = 1 ]; then
    cat /tmp/ds4-sass-$fun.txt
else
    echo "$fun: $(grep -cE '^\s+/\*[0-9a-f]{4,5}\*/' /tmp/ds4-sass-$fun.txt) instructions (listing: /tmp/ds4-sass-$fun.txt)"
    grep -oE '^\s+/\*[0-9a-f]{4,5}\*/\s+(@!?U?P[0-9T] )?[A-Z][A-Z0-9_]+' /tmp/ds4-sass-$fun.txt |
        awk '{print $NF}' | sort | uniq -c | sort -rn | head -20
fi
