// Shared device helpers: fixed-order reductions, f16 rounding, the FP8/FP4 simulations and the RoPE
// angle (spec/model.md §3.2). Every reduction here has a fixed shape, so results repeat bit for bit
// (STYLE §2.5: no float atomics).
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

#define NEG_SENTINEL (-1.0e30f)

// ---- programmatic dependent launch ------------------------------------------------------------
//
// The decode kernels are launched as programmatic dependent launches (device.rs launch_kernel): a
// kernel may start while the previous one runs. pdl_wait() returns once every earlier kernel of the
// stream has finished and its writes are visible; each kernel calls it before touching anything an
// earlier kernel wrote (both no-ops without PDL). pdl_trigger() lets the next kernel be scheduled;
// kernels call it right after their wait, so at most one kernel waits ahead of the running one.
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" :::); }

// ---- reductions ---------------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum; every thread gets the result. `red` holds at least 32 values. Fixed tree order.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < n_warp ? red[lane] : 0.0f;
    t = warp_sum(t);
    return t;
}

__device__ __forceinline__ double block_sum_d(double v, double* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = (blockDim.x + 31) >> 5;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double t = lane < n_warp ? red[lane] : 0.0;
    t = warp_sum_d(t);
    return t;
}

__device__ __forceinline__ float block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < n_warp ? red[lane] : -3.0e38f;
    return warp_max(t);
}

// spec §3.2 P1: 1/sqrt(mean + eps) with the sum of squares in f64, narrowed once to f32.
// Call from every thread of the block; `red` holds 32 doubles.
__device__ __forceinline__ float block_rms_scale(const float* x, int n, float eps, double* red) {
    double ss = 0.0;
    // Unrolled so several loads are in flight (the order of the sum is unchanged).
#pragma unroll 8
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)x[i] * (double)x[i];
    ss = block_sum_d(ss, red);
    const float mean = (float)(ss / (double)n);
    return 1.0f / sqrtf(mean + eps);
}

// ---- small numeric steps ------------------------------------------------------------------------

// spec §3.2 P4: f32 -> f16 (round to nearest even) -> f32.
__device__ __forceinline__ float f16_round(float x) { return __half2float(__float2half_rn(x)); }

__device__ __forceinline__ float sigmoid_stable(float z) {
    if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
    const float e = expf(z);
    return e / (1.0f + e);
}

// spec §3.2 P6: nearest E4M3 magnitude to v (0 <= v <= 448), ties to the even code. Within a
// binade the codes are evenly spaced, and the code index has the parity of the quotient by that
// spacing, so rintf (ties to even) on the quotient is exactly the spec's rule; below 2^-6 the
// spacing is the subnormal 2^-9.
__device__ __forceinline__ float e4m3_round_mag(float v) {
    if (v < 0.015625f) return rintf(v * 512.0f) * 0.001953125f;
    int e;
    frexpf(v, &e);  // v = f·2^e, f in [0.5, 1): the binade is [2^(e-1), 2^e), spacing 2^(e-4)
    const float step = ldexpf(1.0f, e - 4);
    return fminf(rintf(v / step) * step, 448.0f);
}

// spec §3.2 P7: nearest of {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to the even code (same argument).
__device__ __forceinline__ float e2m1_round_mag(float v) {
    if (v < 2.0f) return rintf(v * 2.0f) * 0.5f;
    if (v < 4.0f) return rintf(v);
    return fminf(rintf(v * 0.5f) * 2.0f, 6.0f);
}

// spec §3.2 P6/P7 on `n_blocks` blocks of `bs` values of a shared-memory vector, by the whole
// block: power-of-two scale 2^ceil(log2(amax/qmax)), clamp, round to the nearest code (E4M3 when
// qmax = 448, E2M1 when qmax = 6). `scales` holds n_blocks floats of shared memory.
__device__ __forceinline__ void quant_sim_blocks(float* v, int n_blocks, int bs, float qmax, float amax_floor,
                                                 float* scales) {
    __syncthreads();
    for (int b = threadIdx.x; b < n_blocks; b += blockDim.x) {
        float amax = 0.0f;
        for (int i = 0; i < bs; i++) amax = fmaxf(amax, fabsf(v[b * bs + i]));
        amax = fmaxf(amax, amax_floor);
        scales[b] = exp2f(ceilf(log2f(amax / qmax)));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n_blocks * bs; i += blockDim.x) {
        const float scale = scales[i / bs];
        const float x = fminf(fmaxf(v[i] / scale, -qmax), qmax);
        const float r = qmax == 6.0f ? e2m1_round_mag(fabsf(x)) : e4m3_round_mag(fabsf(x));
        v[i] = copysignf(r, x) * scale;
    }
    __syncthreads();
}

// ---- RoPE (spec §3.2 P5) ------------------------------------------------------------------------

struct RopeArgs {
    float base;
    float freq_scale;
    int yarn;
    int orig_ctx;
    float beta_fast;
    float beta_slow;
    int n_rot;
    int pad;
};

// Angle of pair k at position p. The GPU form p * powf(base, -2k/n_rot) (spec pitfall 22).
__device__ __forceinline__ float rope_theta(const RopeArgs& r, float p, int k) {
    const float theta_ext = p * powf(r.base, -2.0f * (float)k / (float)r.n_rot);
    if (!r.yarn) return theta_ext;
    const float two_pi = 6.283185307179586f;
    const float denom = 2.0f * logf(r.base);
    const float corr_fast = (float)r.n_rot * logf((float)r.orig_ctx / (r.beta_fast * two_pi)) / denom;
    const float corr_slow = (float)r.n_rot * logf((float)r.orig_ctx / (r.beta_slow * two_pi)) / denom;
    const float low = fmaxf(0.0f, floorf(corr_fast));
    const float high = fminf((float)(r.n_rot - 1), ceilf(corr_slow));
    const float t = ((float)k - low) / fmaxf(0.001f, high - low);
    const float ramp = 1.0f - fminf(fmaxf(t, 0.0f), 1.0f);
    const float theta_int = theta_ext * r.freq_scale;
    return theta_int * (1.0f - ramp) + theta_ext * ramp;
}

// Rotates the tail pairs of one D-wide vector; threads of the block share the pairs.
__device__ __forceinline__ void rope_tail_block(float* v, int D, const RopeArgs& r, float p, bool inverse) {
    const int base = D - r.n_rot;
    for (int k = threadIdx.x; k < r.n_rot / 2; k += blockDim.x) {
        const float th = rope_theta(r, p, k);
        float s, c;
        sincosf(th, &s, &c);
        if (inverse) s = -s;
        const float x0 = v[base + 2 * k], x1 = v[base + 2 * k + 1];
        v[base + 2 * k] = x0 * c - x1 * s;
        v[base + 2 * k + 1] = x0 * s + x1 * c;
    }
}

// Position and token of the step being decoded; read by every kernel so one captured graph
// replays for every token.
struct Step {
    int token;
    int pos;
};
