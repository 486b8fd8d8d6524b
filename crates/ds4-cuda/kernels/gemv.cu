// Quantized matrix-vector products y = W·x with f32 activations (the model's own semantics, spec
// §3.13; ds4's Metal path): one templated kernel, the per-type dot in `dot_item`.
//
// Work split: a row is cut into "items" of 8-32 weights whose bytes are contiguous, so the lanes of
// a warp read consecutive memory and every weight byte is read once. `wpr` warps share a row (1 for
// tall matrices, up to 8 for the few-row HC mixers); partial sums meet in a fixed tree.
#include "blocks.cuh"
#include "common.cuh"

enum { TY_F32 = 0, TY_F16 = 1, TY_Q8_0 = 8, TY_Q2_K = 10, TY_Q4_K = 12, TY_IQ2_XXS = 16 };
enum { MODE_PLAIN = 0, MODE_SWIGLU = 1, MODE_DOWN = 2 };

template <int TY> struct Traits;
template <> struct Traits<TY_F32> { enum { BLOCK_ELEMS = 4, BLOCK_BYTES = 16, ITEMS = 1 }; };
template <> struct Traits<TY_F16> { enum { BLOCK_ELEMS = 8, BLOCK_BYTES = 16, ITEMS = 1 }; };
template <> struct Traits<TY_Q8_0> { enum { BLOCK_ELEMS = 32, BLOCK_BYTES = 34, ITEMS = 1 }; };
template <> struct Traits<TY_Q2_K> { enum { BLOCK_ELEMS = 256, BLOCK_BYTES = 84, ITEMS = 8 }; };
template <> struct Traits<TY_Q4_K> { enum { BLOCK_ELEMS = 256, BLOCK_BYTES = 144, ITEMS = 8 }; };
template <> struct Traits<TY_IQ2_XXS> { enum { BLOCK_ELEMS = 256, BLOCK_BYTES = 66, ITEMS = 8 }; };

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint32_t ld_u32_2(const uint8_t* p) {  // 2-byte aligned u32
    const uint16_t* q = (const uint16_t*)p;
    return (uint32_t)__ldg(q) | ((uint32_t)__ldg(q + 1) << 16);
}

// Dot of item `it` of the row starting at `row` with x (the row's input vector).
template <int TY> __device__ __forceinline__ float dot_item(const uint8_t* row, int it, const float* x);

template <> __device__ __forceinline__ float dot_item<TY_F32>(const uint8_t* row, int it, const float* x) {
    const float4 w = __ldg((const float4*)row + it);
    const float4 v = *((const float4*)x + it);
    return w.x * v.x + w.y * v.y + w.z * v.z + w.w * v.w;
}

template <> __device__ __forceinline__ float dot_item<TY_F16>(const uint8_t* row, int it, const float* x) {
    const uint4 w = __ldg((const uint4*)row + it);
    const float4 a = *((const float4*)x + 2 * it), b = *((const float4*)x + 2 * it + 1);
    const float2 w0 = __half22float2(*(const __half2*)&w.x), w1 = __half22float2(*(const __half2*)&w.y);
    const float2 w2 = __half22float2(*(const __half2*)&w.z), w3 = __half22float2(*(const __half2*)&w.w);
    return w0.x * a.x + w0.y * a.y + w1.x * a.z + w1.y * a.w + w2.x * b.x + w2.y * b.y + w3.x * b.z + w3.y * b.w;
}

// Q8_0: one item is one block (34 bytes, 2-byte aligned).
template <> __device__ __forceinline__ float dot_item<TY_Q8_0>(const uint8_t* row, int it, const float* x) {
    const uint8_t* b = row + (size_t)it * 34;
    const uint16_t* q = (const uint16_t*)b;
    const float d = h2f(__ldg(q));
    const float4* xv = (const float4*)(x + it * 32);
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const uint32_t w = (uint32_t)__ldg(q + 1 + 2 * i) | ((uint32_t)__ldg(q + 2 + 2 * i) << 16);
        const float4 v = xv[i];
        s += (float)(int8_t)(w & 0xff) * v.x + (float)(int8_t)((w >> 8) & 0xff) * v.y +
             (float)(int8_t)((w >> 16) & 0xff) * v.z + (float)(int8_t)(w >> 24) * v.w;
    }
    return d * s;
}

// Q2_K item i (0..7) of a block: qs bytes [32h + 8m, +8) with h = i/4, m = i%4; those bytes hold
// the 4 bit-planes j of elements 128h + 32j + 8m + t (t < 8), whose scale byte is
// scales[8h + 2j + m/2].
template <> __device__ __forceinline__ float dot_item<TY_Q2_K>(const uint8_t* row, int it, const float* x) {
    const int blk = it >> 3, i = it & 7, h = i >> 2, m = i & 3;
    const uint8_t* b = row + (size_t)blk * 84;
    const uint32_t q0 = __ldg((const uint32_t*)(b + 16 + 32 * h + 8 * m));
    const uint32_t q1 = __ldg((const uint32_t*)(b + 16 + 32 * h + 8 * m + 4));
    const uint32_t dd = __ldg((const uint32_t*)(b + 80));
    const float d = h2f(dd & 0xffff), dmin = h2f(dd >> 16);
    const uint32_t sc = __ldg((const uint32_t*)(b + 8 * h)) , sc2 = __ldg((const uint32_t*)(b + 8 * h + 4));
    const float* xb = x + blk * 256 + 128 * h + 8 * m;
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int si = 2 * j + (m >> 1);
        const uint32_t s = ((si < 4 ? sc >> (8 * si) : sc2 >> (8 * (si - 4)))) & 0xff;
        const float4 xa = *(const float4*)(xb + 32 * j), xc = *(const float4*)(xb + 32 * j + 4);
        const float qx = (float)((q0 >> (2 * j)) & 3) * xa.x + (float)((q0 >> (8 + 2 * j)) & 3) * xa.y +
                         (float)((q0 >> (16 + 2 * j)) & 3) * xa.z + (float)((q0 >> (24 + 2 * j)) & 3) * xa.w +
                         (float)((q1 >> (2 * j)) & 3) * xc.x + (float)((q1 >> (8 + 2 * j)) & 3) * xc.y +
                         (float)((q1 >> (16 + 2 * j)) & 3) * xc.z + (float)((q1 >> (24 + 2 * j)) & 3) * xc.w;
        const float sx = xa.x + xa.y + xa.z + xa.w + xc.x + xc.y + xc.z + xc.w;
        acc += d * (float)(s & 15) * qx - dmin * (float)(s >> 4) * sx;
    }
    return acc;
}

// Q4_K item i (0..7): qs bytes [32c + 16u, +16) with c = i/2, u = i%2; low nibbles are elements
// 64c + 16u + t of sub-block 2c, high nibbles elements 64c + 32 + 16u + t of sub-block 2c+1.
__device__ __forceinline__ int sbyte(const uint32_t* s, int i) { return (s[i >> 2] >> (8 * (i & 3))) & 0xff; }
__device__ __forceinline__ void q4k_scale_min(int j, const uint32_t* s, int& sc, int& mn) {
    if (j < 4) {
        sc = sbyte(s, j) & 63;
        mn = sbyte(s, j + 4) & 63;
    } else {
        sc = (sbyte(s, j + 4) & 15) | ((sbyte(s, j - 4) >> 6) << 4);
        mn = (sbyte(s, j + 4) >> 4) | ((sbyte(s, j) >> 6) << 4);
    }
}

template <> __device__ __forceinline__ float dot_item<TY_Q4_K>(const uint8_t* row, int it, const float* x) {
    const int blk = it >> 3, i = it & 7, c = i >> 1, u = i & 1;
    const uint8_t* b = row + (size_t)blk * 144;
    const uint4 q = __ldg((const uint4*)(b + 16 + 32 * c + 16 * u));
    const uint32_t dd = __ldg((const uint32_t*)b);
    const float d = h2f(dd & 0xffff), dmin = h2f(dd >> 16);
    const uint32_t s[3] = {__ldg((const uint32_t*)(b + 4)), __ldg((const uint32_t*)(b + 8)),
                           __ldg((const uint32_t*)(b + 12))};
    int sc0, m0, sc1, m1;
    q4k_scale_min(2 * c, s, sc0, m0);
    q4k_scale_min(2 * c + 1, s, sc1, m1);
    const float* xl = x + blk * 256 + 64 * c + 16 * u;
    const float* xh = xl + 32;
    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
    float ql = 0.0f, qh = 0.0f, sl = 0.0f, sh = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float4 a = *(const float4*)(xl + 4 * k), e = *(const float4*)(xh + 4 * k);
        const uint32_t v = w[k];
        ql += (float)(v & 15) * a.x + (float)((v >> 8) & 15) * a.y + (float)((v >> 16) & 15) * a.z + (float)((v >> 24) & 15) * a.w;
        qh += (float)((v >> 4) & 15) * e.x + (float)((v >> 12) & 15) * e.y + (float)((v >> 20) & 15) * e.z + (float)((v >> 28) & 15) * e.w;
        sl += a.x + a.y + a.z + a.w;
        sh += e.x + e.y + e.z + e.w;
    }
    return d * ((float)sc0 * ql + (float)sc1 * qh) - dmin * ((float)m0 * sl + (float)m1 * sh);
}

// The IQ2_XXS grid, copied per block into shared memory: lanes index it with different values,
// which constant memory would serialise.
__shared__ uint64_t s_iq2_grid[256];

// IQ2_XXS item i (0..7): sub-block i, 8 bytes at 2 + 8i (2-byte aligned).
template <> __device__ __forceinline__ float dot_item<TY_IQ2_XXS>(const uint8_t* row, int it, const float* x) {
    const int blk = it >> 3, i = it & 7;
    const uint8_t* b = row + (size_t)blk * 66;
    const float d = h2f(__ldg((const uint16_t*)b));
    const uint32_t a0 = ld_u32_2(b + 2 + 8 * i), a1 = ld_u32_2(b + 6 + 8 * i);
    const float db = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
    const float* xb = x + blk * 256 + 32 * i;
    float acc = 0.0f;
#pragma unroll
    for (int l = 0; l < 4; l++) {
        const uint64_t g = s_iq2_grid[(a0 >> (8 * l)) & 255];
        const uint32_t sidx = (a1 >> (7 * l)) & 127;
        const uint32_t signs = sidx | ((__popc(sidx) & 1) << 7);  // ksigns_iq2xs[sidx]
        const float4 xa = *(const float4*)(xb + 8 * l), xc = *(const float4*)(xb + 8 * l + 4);
        const float xs[8] = {xa.x, xa.y, xa.z, xa.w, xc.x, xc.y, xc.z, xc.w};
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const float mag = (float)((g >> (8 * k)) & 0xff);
            acc += ((signs >> k) & 1) ? -mag * xs[k] : mag * xs[k];
        }
    }
    return db * acc;
}

struct GemvArgs {
    const uint8_t* w;       // matrix (expert 0 for expert-indexed modes)
    const uint8_t* w2;      // MODE_SWIGLU: the up matrix
    const float* x;         // input; MODE_DOWN: n_sel stacked inputs of n_in
    float* y;               // output; MODE_SWIGLU with sel: n_sel stacked outputs of n_rows
    const float* add;       // optional, added to y (MODE_PLAIN, MODE_DOWN)
    const float* xscale;    // optional device scalar multiplied into y (HC flat RMS scale)
    const int* sel;         // optional expert ids (n_sel)
    const float* route_w;   // optional route weights (n_sel), MODE_SWIGLU
    const int* gate;        // optional device flag: when *gate == 0 the launch does nothing
    unsigned long long row_bytes;
    unsigned long long expert_bytes;
    int n_in;
    int n_rows;
    int rows_per_group;     // > 0: row o reads x + (o / rows_per_group) * n_in (grouped output)
    int n_sel;
    int wpr;                // warps per row: 1, 2, 4 or 8
    float clamp;            // SwiGLU clamp (spec §3.6 F5)
    float alpha;            // constant output scale
    int pad;
};

template <int TY>
__device__ __forceinline__ float row_dot(const uint8_t* row, const float* x, int n_items, int t, int stride) {
    float acc = 0.0f;
#pragma unroll 4
    for (int it = t; it < n_items; it += stride) acc += dot_item<TY>(row, it, x);
    return acc;
}

// Sums one value per warp of a row's warp group in a fixed order; result valid in the group's lane 0
// of its first warp.
__device__ __forceinline__ float row_reduce(float v, int wpr, float* red) {
    v = warp_sum(v);
    if (wpr == 1) return v;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = 0.0f;
    if ((warp % wpr) == 0 && lane == 0)
        for (int k = 0; k < wpr; k++) t += red[warp + k];
    return t;
}

template <int TY, int MODE>
__device__ void gemv_body(const GemvArgs& a) {
    __shared__ float red[2][32];
    if (a.gate && *a.gate == 0) return;
    if (TY == TY_IQ2_XXS) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) s_iq2_grid[i] = IQ2XXS_GRID[i];
        __syncthreads();
    }
    constexpr int ITEMS = Traits<TY>::ITEMS;
    const int n_items = a.n_in / Traits<TY>::BLOCK_ELEMS * ITEMS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int rows_per_block = (blockDim.x >> 5) / a.wpr;
    const int o = blockIdx.x * rows_per_block + warp / a.wpr;
    const int t = (warp % a.wpr) * 32 + lane, stride = a.wpr * 32;
    const bool live = o < a.n_rows;
    const int k = blockIdx.y;  // expert slot (MODE_SWIGLU with sel)
    if (MODE == MODE_PLAIN) {
        const float* x = a.x + (a.rows_per_group > 0 && live ? (size_t)(o / a.rows_per_group) * a.n_in : 0);
        float v = live ? row_dot<TY>(a.w + (size_t)o * a.row_bytes, x, n_items, t, stride) : 0.0f;
        v = row_reduce(v, a.wpr, red[0]);
        if (live && t == 0) {
            float r = v * a.alpha;
            if (a.xscale) r *= *a.xscale;
            if (a.add) r = a.add[o] + r;
            a.y[o] = r;
        }
    } else if (MODE == MODE_SWIGLU) {
        size_t eoff = 0;
        if (a.sel) eoff = (size_t)a.sel[k] * a.expert_bytes;
        float g = 0.0f, u = 0.0f;
        if (live) {
            g = row_dot<TY>(a.w + eoff + (size_t)o * a.row_bytes, a.x, n_items, t, stride);
            u = row_dot<TY>(a.w2 + eoff + (size_t)o * a.row_bytes, a.x, n_items, t, stride);
        }
        g = row_reduce(g, a.wpr, red[0]);
        u = row_reduce(u, a.wpr, red[1]);
        if (live && t == 0) {
            // spec §3.6 F5: gate clamped from above only, up clamped both ways; route weight last.
            g = fminf(g, a.clamp);
            u = fminf(fmaxf(u, -a.clamp), a.clamp);
            float h = g * sigmoid_stable(g) * u;
            if (a.route_w) h = h * a.route_w[k];
            a.y[(size_t)k * a.n_rows + o] = h;
        }
    } else {  // MODE_DOWN: y[o] = sum over experts in selection order
        float acc = 0.0f;
        for (int s = 0; s < a.n_sel; s++) {
            float v = 0.0f;
            if (live) {
                const uint8_t* row = a.w + (size_t)a.sel[s] * a.expert_bytes + (size_t)o * a.row_bytes;
                v = row_dot<TY>(row, a.x + (size_t)s * a.n_in, n_items, t, stride);
            }
            v = row_reduce(v, a.wpr, red[s & 1]);
            acc += v;
        }
        if (live && t == 0) {
            float r = acc * a.alpha;
            if (a.add) r = r + a.add[o];
            a.y[o] = r;
        }
    }
}

#define GEMV_KERNEL(NAME, TY, MODE) \
    extern "C" __global__ void __launch_bounds__(256) NAME(GemvArgs a) { gemv_body<TY, MODE>(a); }

GEMV_KERNEL(gemv_f32, TY_F32, MODE_PLAIN)
GEMV_KERNEL(gemv_f16, TY_F16, MODE_PLAIN)
GEMV_KERNEL(gemv_q8_0, TY_Q8_0, MODE_PLAIN)
GEMV_KERNEL(gemv_q2_k, TY_Q2_K, MODE_PLAIN)
GEMV_KERNEL(gemv_q4_k, TY_Q4_K, MODE_PLAIN)
GEMV_KERNEL(gemv_iq2_xxs, TY_IQ2_XXS, MODE_PLAIN)
GEMV_KERNEL(gemv_swiglu_q8_0, TY_Q8_0, MODE_SWIGLU)
GEMV_KERNEL(gemv_swiglu_q2_k, TY_Q2_K, MODE_SWIGLU)
GEMV_KERNEL(gemv_swiglu_q4_k, TY_Q4_K, MODE_SWIGLU)
GEMV_KERNEL(gemv_swiglu_iq2_xxs, TY_IQ2_XXS, MODE_SWIGLU)
GEMV_KERNEL(gemv_swiglu_f16, TY_F16, MODE_SWIGLU)
GEMV_KERNEL(gemv_swiglu_f32, TY_F32, MODE_SWIGLU)
GEMV_KERNEL(gemv_down_q8_0, TY_Q8_0, MODE_DOWN)
GEMV_KERNEL(gemv_down_q2_k, TY_Q2_K, MODE_DOWN)
GEMV_KERNEL(gemv_down_q4_k, TY_Q4_K, MODE_DOWN)
GEMV_KERNEL(gemv_down_iq2_xxs, TY_IQ2_XXS, MODE_DOWN)
GEMV_KERNEL(gemv_down_f16, TY_F16, MODE_DOWN)
GEMV_KERNEL(gemv_down_f32, TY_F32, MODE_DOWN)

// ---- synthetic weights (ds4-bench --synthetic) --------------------------------------------------

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

// Fills `n_bytes` with random bytes (quantized types: every quant/sub-scale bit pattern is valid;
// fix_scales then sets the f16 super-scales) or uniform values in ±scale (F16/F32).
extern "C" __global__ void fill_random(uint8_t* dst, unsigned long long n_bytes, unsigned long long seed, int ty,
                                       float scale) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    if (ty == TY_F32) {
        float* f = (float*)dst;
        for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n_bytes / 4; i += stride)
            f[i] = ((float)(hash32(seed * 0x9E3779B97F4A7C15ull + i) & 0xffff) / 32768.0f - 1.0f) * scale;
        return;
    }
    if (ty == TY_F16) {
        __half* h = (__half*)dst;
        for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n_bytes / 2; i += stride)
            h[i] = __float2half(((float)(hash32(seed * 0x9E3779B97F4A7C15ull + i) & 0xffff) / 32768.0f - 1.0f) * scale);
        return;
    }
    uint32_t* w = (uint32_t*)dst;  // quantized tensors are 4-byte multiples in total, 2-aligned blocks
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n_bytes / 4; i += stride)
        w[i] = hash32(seed * 0x9E3779B97F4A7C15ull + i);
}

// Second pass: valid f16 scales per block, d within ±50% of `scale`, dmin = dmin_ratio·d so that
// K-quant values have mean about zero (the constants of ds4-quant's synth.rs).
extern "C" __global__ void fix_scales(uint8_t* dst, unsigned long long n_blocks, int ty, float scale,
                                      float dmin_ratio) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long b = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; b < n_blocks; b += stride) {
        const float jitter = 0.5f + (float)(hash32(b * 7919u) & 1023) / 1024.0f;
        const __half s = __float2half(scale * jitter);
        const __half m = __float2half(scale * jitter * dmin_ratio);
        if (ty == TY_Q8_0) {
            *(__half*)(dst + b * 34) = s;
        } else if (ty == TY_Q2_K) {
            *(__half*)(dst + b * 84 + 80) = s;
            *(__half*)(dst + b * 84 + 82) = m;
        } else if (ty == TY_Q4_K) {
            *(__half*)(dst + b * 144) = s;
            *(__half*)(dst + b * 144 + 2) = m;
        } else if (ty == TY_IQ2_XXS) {
            *(__half*)(dst + b * 66) = s;
        }
    }
}
