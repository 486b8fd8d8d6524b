// Routed-expert matrix-vector kernels for decode (IQ2_XXS / Q2_K / Q4_K, raw GGUF blocks): the
// SwiGLU of the selected experts' gate/up rows and the down projection summed in selection order.
// (Placeholder until the experts kernels land; see src/experts.rs.)
#include "blocks.cuh"
#include "common.cuh"

extern "C" __global__ void experts_placeholder(int* p) {
    if (p) *p = 0;
}
