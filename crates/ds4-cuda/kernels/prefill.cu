// Batched prefill (spec/model.md §3.8: a chunk runs layer by layer): tensor-core GEMMs for every
// weight product of a chunk of T tokens, and batched versions of the decode step's small ops with the
// token index in blockIdx.y. The cache-touching steps keep the decode semantics: the compressor
// state advances token by token (a thread per column walks the chunk in position order), the chunk's
// own raw rows stay in a chunk buffer until attention is done (a chunk may be longer than the raw
// window), and every token attends over ring-before-chunk + chunk rows up to itself.
//
// GEMM numerics: Y = X·Wᵀ on mma.sync m16n8k16 (f16 in, f32 accumulate). Weights become f16 exactly
// (int8 Q8_0 quants, IQ2_XXS grid values, K-quant 2/4-bit quants, F16 as is) and the block scales
// are applied to the f32 partial sum of each 16-wide k step; X is split into hi + lo f16 halves, so
// each product keeps ~22 bits. K-quant mins use exact f32 sums of x per 16-wide step.
#include "blocks.cuh"
#include "blockops.cuh"
#include "mma.cuh"

enum { PT_F32 = 0, PT_F16 = 1, PT_Q8R = 8, PT_Q2_K = 10, PT_Q4_K = 12, PT_IQ2_XXS = 16 };

__device__ __forceinline__ float pf_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// ---- GEMM ---------------------------------------------------------------------------------------

struct PfGemmArgs {
    const float* x;          // F32 path: A rows, f32, row stride ldx
    const __half* xh;        // tensor-core path: A split into hi + lo halves (pf_split), stride ldx
    const __half* xl;
    const float* xs;         // f32 sums of each 16-wide k step of A, stride ldx/16
    const int* gather;       // optional: tile row r reads A row gather[r] / gather_div
    float* y;                // output rows, stride ldy
    const uint8_t* w;        // weights: Q8R int8 quants [rows][K]; raw GGUF rows otherwise
    const __half* wscale;    // Q8R: f16 scales [rows][K/32]
    const float* rowscale;   // F32 path: x row r is multiplied by rowscale[r]
    const float* add;        // optional: y = add[r*ldadd + n] + y
    const int* tiles;        // expert mode: (expert, row0, n_rows) per tile
    const int* n_tiles;      // expert mode: number of tiles (device)
    unsigned long long w_row_bytes;  // raw types: bytes per weight row
    long long ldx, ldy, ldadd;
    long long gx, gy;        // group (blockIdx.z) offsets into A and y, in elements
    int M, N, K;
    int gather_div;
    float alpha;
    int pad;
};

#define G_BM 64
#define G_BN 128
#define G_BK 64  // k per pass
#define G_KS 4   // 16-wide k steps per pass
#define G_SA 72  // shared row stride in halves: 64 + 8 keeps fragment loads conflict-free

// A = x·rowscale split into f16 hi + lo (hi = f16(a), lo = f16(a − hi)) and the f32 sum of every
// 16-wide k step (the K-quant mins). Thread per 16 values; row blockIdx.y. All strides ldx.
extern "C" __global__ void pf_split(const float* x, long long ldx, int K, const float* rowscale, __half* xh,
                                    __half* xl, float* xs) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c * 16 >= K) return;
    const size_t r = blockIdx.y;
    const float mul = rowscale ? rowscale[r] : 1.0f;
    const float4* p = (const float4*)(x + r * ldx + (size_t)c * 16);
    __align__(16) __half h[16];
    __align__(16) __half l[16];
    float s = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float4 v4 = p[i];
        const float v[4] = {v4.x * mul, v4.y * mul, v4.z * mul, v4.w * mul};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const __half hh = __float2half_rn(v[k]);
            h[4 * i + k] = hh;
            l[4 * i + k] = __float2half_rn(v[k] - __half2float(hh));
            s += v[k];
        }
    }
    uint4* dh = (uint4*)(xh + r * ldx + (size_t)c * 16);
    uint4* dl = (uint4*)(xl + r * ldx + (size_t)c * 16);
    dh[0] = ((const uint4*)h)[0];
    dh[1] = ((const uint4*)h)[1];
    dl[0] = ((const uint4*)l)[0];
    dl[1] = ((const uint4*)l)[1];
    xs[r * (ldx / 16) + c] = s;
}

__device__ __forceinline__ uint32_t pf_ld_u32_2(const uint8_t* p) {
    const uint16_t* q = (const uint16_t*)p;
    return (uint32_t)q[0] | ((uint32_t)q[1] << 16);
}

__device__ __forceinline__ int pf_sbyte(const uint8_t* s, int i) { return s[i]; }
__device__ __forceinline__ void pf_q4k_scale_min(int j, const uint8_t* s, int& sc, int& mn) {
    if (j < 4) {
        sc = s[j] & 63;
        mn = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// 16 weights k0..k0+15 of one row as exact f16 values, with the step's scale sa and min sb
// (w = sa·q − sb).
template <int TY>
__device__ __forceinline__ void load_w16(const uint8_t* wrow, const __half* srow, int k0, const uint64_t* grid,
                                         __half* dst, float& sa, float& sb) {
    sb = 0.0f;
    if constexpr (TY == PT_Q8R) {
        const int4 v = *(const int4*)(wrow + k0);
        const int8_t* b = (const int8_t*)&v;
#pragma unroll
        for (int i = 0; i < 16; i++) dst[i] = __short2half_rn((short)b[i]);
        sa = __half2float(srow[k0 / 32]);
    } else if constexpr (TY == PT_F16) {
        const uint4* s = (const uint4*)(wrow + (size_t)k0 * 2);
        ((uint4*)dst)[0] = s[0];
        ((uint4*)dst)[1] = s[1];
        sa = 1.0f;
    } else if constexpr (TY == PT_IQ2_XXS) {
        const uint8_t* b = wrow + (size_t)(k0 / 256) * 66;
        const float d = pf_h2f(*(const uint16_t*)b);
        const int ib = (k0 % 256) / 32;
        const uint32_t a0 = pf_ld_u32_2(b + 2 + 8 * ib), a1 = pf_ld_u32_2(b + 6 + 8 * ib);
        sa = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
        const int l0 = (k0 % 32) / 8;  // 0 or 2
#pragma unroll
        for (int ll = 0; ll < 2; ll++) {
            const int l = l0 + ll;
            const uint64_t g = grid[(a0 >> (8 * l)) & 255];
            const uint32_t sidx = (a1 >> (7 * l)) & 127;
            const uint32_t signs = sidx | ((__popc(sidx) & 1) << 7);
#pragma unroll
            for (int k = 0; k < 8; k++) {
                const int mag = (int)((g >> (8 * k)) & 0xff);
                dst[ll * 8 + k] = __int2half_rn(((signs >> k) & 1) ? -mag : mag);
            }
        }
    } else if constexpr (TY == PT_Q2_K) {
        const uint8_t* b = wrow + (size_t)(k0 / 256) * 84;
        const int e0 = k0 % 256;
        const int h = e0 / 128, j = (e0 % 128) / 32, l0 = e0 % 32;
        const int sc = b[e0 / 16];
        const float d = pf_h2f(*(const uint16_t*)(b + 80)), dmin = pf_h2f(*(const uint16_t*)(b + 82));
#pragma unroll
        for (int u = 0; u < 16; u++) dst[u] = __int2half_rn((b[16 + 32 * h + l0 + u] >> (2 * j)) & 3);
        sa = d * (float)(sc & 15);
        sb = dmin * (float)(sc >> 4);
    } else if constexpr (TY == PT_Q4_K) {
        const uint8_t* b = wrow + (size_t)(k0 / 256) * 144;
        const int e0 = k0 % 256;
        const int c = e0 / 64, u0 = e0 % 64;
        int sc, mn;
        pf_q4k_scale_min(e0 / 32, b + 4, sc, mn);
        const bool hi = u0 >= 32;
        const uint8_t* q = b + 16 + 32 * c + (u0 % 32);
#pragma unroll
        for (int u = 0; u < 16; u++) dst[u] = __int2half_rn(hi ? (q[u] >> 4) : (q[u] & 15));
        const float d = pf_h2f(*(const uint16_t*)b), dmin = pf_h2f(*(const uint16_t*)(b + 2));
        sa = d * (float)sc;
        sb = dmin * (float)mn;
    }
}

// One block computes a 64×128 tile of Y with 8 warps (warp w: rows 16·(w%4), columns 64·(w/4),
// 16 × 64 each), 64 k per pass. Partial sums over one scale span (16 k for Q2_K, 32 otherwise; the
// whole pass for F16) start from zero in a fresh fragment and are added to the accumulator with
// their scale, so the tensor core's accumulation never absorbs small terms into a large sum.
template <int TY>
__device__ void gemm_body(const PfGemmArgs& a) {
    __shared__ __align__(16) __half s_ah[G_BM * G_SA];
    __shared__ __align__(16) __half s_al[G_BM * G_SA];
    __shared__ __align__(16) __half s_b[G_BN * G_SA];
    __shared__ float s_sa[G_BN][G_KS], s_sb[G_BN][G_KS], s_xs[G_BM][G_KS];
    __shared__ uint64_t s_grid[256];
    __shared__ int s_src[G_BM];
    constexpr int SPAN = TY == PT_Q2_K ? 1 : (TY == PT_F16 ? 4 : 2);  // 16-wide steps per scale
    int e = 0, row0, n_rows;
    if (a.tiles) {
        if ((int)blockIdx.y >= *a.n_tiles) return;
        e = a.tiles[3 * blockIdx.y];
        row0 = a.tiles[3 * blockIdx.y + 1];
        n_rows = a.tiles[3 * blockIdx.y + 2];
    } else {
        row0 = blockIdx.y * G_BM;
        n_rows = min(G_BM, a.M - row0);
    }
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int wm = warp & 3, wnb = (warp >> 2) * 64;
    const int n0 = blockIdx.x * G_BN;
    if (TY == PT_IQ2_XXS) {
        for (int i = tid; i < 256; i += blockDim.x) s_grid[i] = IQ2XXS_GRID[i];
    }
    if (tid < G_BM) {
        const int r = row0 + tid;
        s_src[tid] = tid < n_rows ? (a.gather ? a.gather[r] / a.gather_div : r) : -1;
    }
    __syncthreads();
    // A loader: row tid/4, 16-wide step tid%4 of each pass (two 16-byte loads each of hi and lo).
    const int ar = tid >> 2, aq = tid & 3;
    const int asrc = s_src[ar];
    const size_t aoff = asrc >= 0 ? (size_t)blockIdx.z * a.gx + (size_t)asrc * a.ldx : 0;
    // B loader: column tid/2, 16-wide steps tid%2 and tid%2 + 2.
    const int br = tid >> 1, bh = tid & 1;
    const int wn = n0 + br;
    const size_t wrow_idx = (size_t)(blockIdx.z + e) * a.N + (wn < a.N ? wn : 0);
    const uint8_t* wrow = TY == PT_Q8R ? a.w + wrow_idx * a.K : a.w + wrow_idx * a.w_row_bytes;
    const __half* srow = TY == PT_Q8R ? a.wscale + wrow_idx * (a.K / 32) : nullptr;

    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

    for (int k0 = 0; k0 < a.K; k0 += G_BK) {
        {
            const int k = k0 + 16 * aq;
            uint4* dh = (uint4*)(s_ah + ar * G_SA + 16 * aq);
            uint4* dl = (uint4*)(s_al + ar * G_SA + 16 * aq);
            if (asrc >= 0 && k < a.K) {
                const uint4* ph = (const uint4*)(a.xh + aoff + k);
                const uint4* pl = (const uint4*)(a.xl + aoff + k);
                const uint4 h0 = ph[0], h1 = ph[1], l0 = pl[0], l1 = pl[1];
                dh[0] = h0;
                dh[1] = h1;
                dl[0] = l0;
                dl[1] = l1;
                if (TY == PT_Q2_K || TY == PT_Q4_K) s_xs[ar][aq] = a.xs[aoff / 16 + k / 16];
            } else {
                const uint4 z = make_uint4(0, 0, 0, 0);
                dh[0] = dh[1] = dl[0] = dl[1] = z;
                s_xs[ar][aq] = 0.0f;
            }
        }
#pragma unroll
        for (int sub = 0; sub < 2; sub++) {
            const int ks = bh + 2 * sub;
            const int k = k0 + 16 * ks;
            float sa = 0.0f, sb = 0.0f;
            __half* d = s_b + br * G_SA + 16 * ks;
            if (wn < a.N && k < a.K) {
                load_w16<TY>(wrow, srow, k, s_grid, d, sa, sb);
            } else {
#pragma unroll
                for (int i = 0; i < 16; i++) d[i] = __float2half_rn(0.0f);
            }
            s_sa[br][ks] = sa;
            s_sb[br][ks] = sb;
        }
        __syncthreads();
        float tmp[8][4];
#pragma unroll
        for (int kh = 0; kh < G_KS; kh++) {
            if (kh % SPAN == 0) {
#pragma unroll
                for (int i = 0; i < 8; i++) tmp[i][0] = tmp[i][1] = tmp[i][2] = tmp[i][3] = 0.0f;
            }
            uint32_t ah[4], al[4];
            const int r0 = wm * 16 + g, kc = kh * 16 + 2 * t4;
            ah[0] = *(const uint32_t*)(s_ah + r0 * G_SA + kc);
            ah[1] = *(const uint32_t*)(s_ah + (r0 + 8) * G_SA + kc);
            ah[2] = *(const uint32_t*)(s_ah + r0 * G_SA + kc + 8);
            ah[3] = *(const uint32_t*)(s_ah + (r0 + 8) * G_SA + kc + 8);
            al[0] = *(const uint32_t*)(s_al + r0 * G_SA + kc);
            al[1] = *(const uint32_t*)(s_al + (r0 + 8) * G_SA + kc);
            al[2] = *(const uint32_t*)(s_al + r0 * G_SA + kc + 8);
            al[3] = *(const uint32_t*)(s_al + (r0 + 8) * G_SA + kc + 8);
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                const int nb = wnb + nt * 8 + g;
                const uint32_t b0 = *(const uint32_t*)(s_b + nb * G_SA + kc);
                const uint32_t b1 = *(const uint32_t*)(s_b + nb * G_SA + kc + 8);
                mma16816(tmp[nt], ah, b0, b1);
                mma16816(tmp[nt], al, b0, b1);
            }
            if (kh % SPAN == SPAN - 1) {
                const int ks = kh - (SPAN - 1);  // first step of the span (scales are per span)
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    if (TY == PT_F16) {
                        acc[nt][0] += tmp[nt][0];
                        acc[nt][1] += tmp[nt][1];
                        acc[nt][2] += tmp[nt][2];
                        acc[nt][3] += tmp[nt][3];
                    } else {
                        const int c0 = wnb + nt * 8 + 2 * t4;
                        const float sa0 = s_sa[c0][ks], sa1 = s_sa[c0 + 1][ks];
                        acc[nt][0] += sa0 * tmp[nt][0];
                        acc[nt][1] += sa1 * tmp[nt][1];
                        acc[nt][2] += sa0 * tmp[nt][2];
                        acc[nt][3] += sa1 * tmp[nt][3];
                        if (TY == PT_Q2_K || TY == PT_Q4_K) {
                            float xs0 = 0.0f, xs1 = 0.0f;
#pragma unroll
                            for (int q = 0; q < SPAN; q++) {
                                xs0 += s_xs[r0][ks + q];
                                xs1 += s_xs[r0 + 8][ks + q];
                            }
                            const float sb0 = s_sb[c0][ks], sb1 = s_sb[c0 + 1][ks];
                            acc[nt][0] -= sb0 * xs0;
                            acc[nt][1] -= sb1 * xs0;
                            acc[nt][2] -= sb0 * xs1;
                            acc[nt][3] -= sb1 * xs1;
                        }
                    }
                }
            }
        }
        __syncthreads();
    }
    float* yg = a.y + (size_t)blockIdx.z * a.gy;
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int r = wm * 16 + g + (q >= 2 ? 8 : 0);
            const int n = n0 + wnb + nt * 8 + 2 * t4 + (q & 1);
            if (r < n_rows && n < a.N) {
                float v = acc[nt][q] * a.alpha;
                const size_t gr = (size_t)(row0 + r);
                if (a.add) v = a.add[gr * a.ldadd + n] + v;
                yg[gr * a.ldy + n] = v;
            }
        }
    }
}

// ---- GEMM, pipelined variant ---------------------------------------------------------------------
// Same tile, arithmetic and results as gemm_body, but the next pass's loads are in flight while the
// current pass computes: A (already f16) by cp.async into the other of two shared stages, the raw
// weight bytes of B into registers (decoded into shared memory at the top of the next pass).

struct WRaw {
    uint32_t v[8];
};

// Global loads of the 16 weights k..k+15 of one row (no decoding).
template <int TY>
__device__ __forceinline__ void fetch_w16(const uint8_t* wrow, const __half* srow, int k, WRaw& r) {
    if constexpr (TY == PT_Q8R) {
        const uint4 q = *(const uint4*)(wrow + k);
        r.v[0] = q.x;
        r.v[1] = q.y;
        r.v[2] = q.z;
        r.v[3] = q.w;
        r.v[4] = __half_as_ushort(srow[k / 32]);
    } else if constexpr (TY == PT_F16) {
        const uint4* p = (const uint4*)(wrow + (size_t)k * 2);
        const uint4 a = p[0], b = p[1];
        r.v[0] = a.x;
        r.v[1] = a.y;
        r.v[2] = a.z;
        r.v[3] = a.w;
        r.v[4] = b.x;
        r.v[5] = b.y;
        r.v[6] = b.z;
        r.v[7] = b.w;
    } else if constexpr (TY == PT_IQ2_XXS) {
        const uint8_t* b = wrow + (size_t)(k / 256) * 66;
        const int ib = (k % 256) / 32;
        r.v[0] = *(const uint16_t*)b;
        r.v[1] = pf_ld_u32_2(b + 2 + 8 * ib);
        r.v[2] = pf_ld_u32_2(b + 6 + 8 * ib);
    } else if constexpr (TY == PT_Q2_K) {
        const uint8_t* b = wrow + (size_t)(k / 256) * 84;
        const int e0 = k % 256;
        const int h = e0 / 128, l0 = e0 % 32;
        r.v[0] = b[e0 / 16];
        r.v[1] = *(const uint32_t*)(b + 80);
        const uint32_t* q = (const uint32_t*)(b + 16 + 32 * h + l0);
        r.v[2] = q[0];
        r.v[3] = q[1];
        r.v[4] = q[2];
        r.v[5] = q[3];
    } else if constexpr (TY == PT_Q4_K) {
        const uint8_t* b = wrow + (size_t)(k / 256) * 144;
        const int e0 = k % 256;
        const int c = e0 / 64, u0 = e0 % 64;
        r.v[0] = *(const uint32_t*)(b + 4);
        r.v[1] = *(const uint32_t*)(b + 8);
        r.v[2] = *(const uint32_t*)(b + 12);
        r.v[3] = *(const uint32_t*)b;
        const uint4 q = *(const uint4*)(b + 16 + 32 * c + (u0 % 32));
        r.v[4] = q.x;
        r.v[5] = q.y;
        r.v[6] = q.z;
        r.v[7] = q.w;
    }
}

__device__ __forceinline__ int wraw_byte(const WRaw& r, int first, int i) { return (r.v[first + i / 4] >> (8 * (i % 4))) & 0xff; }

// Four bytes of `w` (each < 1024 as an integer) as four exact f16 values minus `bias`, without
// I2F (a quarter-rate instruction on sm_90): 0x6400 | u is the f16 1024 + u, then one half2
// subtraction. Writes two half2 words.
__device__ __forceinline__ void bytes4_to_h(uint32_t w, __half2 bias, uint32_t* out) {
    const uint32_t lo = __byte_perm(w, 0x64646464u, 0x5150), hi = __byte_perm(w, 0x64646464u, 0x5352);
    const __half2 l = __hsub2(*(const __half2*)&lo, bias), h = __hsub2(*(const __half2*)&hi, bias);
    out[0] = *(const uint32_t*)&l;
    out[1] = *(const uint32_t*)&h;
}

// The fetched bytes as 16 exact f16 weights and the step's scale and min (w = sa·q − sb).
template <int TY>
__device__ __forceinline__ void decode_w16(const WRaw& r, int k, const uint64_t* grid, __half* dst, float& sa, float& sb) {
    sb = 0.0f;
    uint32_t* o = (uint32_t*)dst;  // 8 half2 words (dst is 16-byte aligned)
    const __half2 b1024 = __half2half2(__ushort_as_half(0x6400));          // 1024
    if constexpr (TY == PT_Q8R) {
        const __half2 b1152 = __half2half2(__ushort_as_half(0x6480));      // 1024 + 128
#pragma unroll
        for (int i = 0; i < 4; i++) bytes4_to_h(r.v[i] ^ 0x80808080u, b1152, o + 2 * i);
        sa = __half2float(__ushort_as_half((uint16_t)r.v[4]));
    } else if constexpr (TY == PT_F16) {
        uint4* d = (uint4*)dst;
        d[0] = make_uint4(r.v[0], r.v[1], r.v[2], r.v[3]);
        d[1] = make_uint4(r.v[4], r.v[5], r.v[6], r.v[7]);
        sa = 1.0f;
    } else if constexpr (TY == PT_IQ2_XXS) {
        const float d = pf_h2f((uint16_t)r.v[0]);
        const uint32_t a0 = r.v[1], a1 = r.v[2];
        sa = d * (0.5f + (float)(a1 >> 28)) * 0.25f;
        const int l0 = (k % 32) / 8;
#pragma unroll
        for (int ll = 0; ll < 2; ll++) {
            const int l = l0 + ll;
            const uint64_t g = grid[(a0 >> (8 * l)) & 255];
            const uint32_t sidx = (a1 >> (7 * l)) & 127;
            const uint32_t signs = sidx | ((__popc(sidx) & 1) << 7);
            bytes4_to_h((uint32_t)g, b1024, o + 4 * ll);
            bytes4_to_h((uint32_t)(g >> 32), b1024, o + 4 * ll + 2);
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const uint32_t s0 = (signs >> (2 * q)) & 1, s1 = (signs >> (2 * q + 1)) & 1;
                o[4 * ll + q] ^= (s0 << 15) | (s1 << 31);
            }
        }
    } else if constexpr (TY == PT_Q2_K) {
        const int j = ((k % 256) % 128) / 32;
        const int sc = (int)r.v[0];
        const float d = pf_h2f((uint16_t)(r.v[1] & 0xffff)), dmin = pf_h2f((uint16_t)(r.v[1] >> 16));
#pragma unroll
        for (int i = 0; i < 4; i++) bytes4_to_h((r.v[2 + i] >> (2 * j)) & 0x03030303u, b1024, o + 2 * i);
        sa = d * (float)(sc & 15);
        sb = dmin * (float)(sc >> 4);
    } else if constexpr (TY == PT_Q4_K) {
        const int e0 = k % 256;
        const int j = e0 / 32;
        const uint32_t s0 = r.v[0], s1 = r.v[1], s2 = r.v[2];
        const uint32_t sw[3] = {s0, s1, s2};
        auto sbyte = [&](int i) -> int {  // i < 12, resolved at compile time after unrolling j
            return (int)((sw[i >> 2] >> (8 * (i & 3))) & 0xff);
        };
        int sc = 0, mn = 0;
#pragma unroll
        for (int jj = 0; jj < 8; jj++) {
            if (jj == j) {
                if (jj < 4) {
                    sc = sbyte(jj) & 63;
                    mn = sbyte(jj + 4) & 63;
                } else {
                    sc = (sbyte(jj + 4) & 15) | ((sbyte(jj - 4) >> 6) << 4);
                    mn = (sbyte(jj + 4) >> 4) | ((sbyte(jj) >> 6) << 4);
                }
            }
        }
        const int shift = (e0 % 64) >= 32 ? 4 : 0;
#pragma unroll
        for (int i = 0; i < 4; i++) bytes4_to_h((r.v[4 + i] >> shift) & 0x0f0f0f0fu, b1024, o + 2 * i);
        const float d = pf_h2f((uint16_t)(r.v[3] & 0xffff)), dmin = pf_h2f((uint16_t)(r.v[3] >> 16));
        sa = d * (float)sc;
        sb = dmin * (float)mn;
    }
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

#define G3_STAGE (2 * G_BM * G_SA)  // halves per A stage (hi then lo)

// Dynamic shared memory: see G3_SMEM_BYTES. LDSM: the mma fragments come from shared memory by
// ldmatrix (one instruction per 16×16 A tile or per two 8-column B tiles, instead of four and two
// 32-bit loads per lane): the same values, so the same results bit for bit.
template <int TY, bool LDSM>
__device__ void gemm_body3(const PfGemmArgs& a) {
    extern __shared__ __align__(16) unsigned char g3_smem[];
    __half* s_a = (__half*)g3_smem;                   // [2 stages][hi, lo][G_BM][G_SA]
    __half* s_b = s_a + 2 * G3_STAGE;                 // [G_BN][G_SA]
    float* s_sa = (float*)(s_b + G_BN * G_SA);        // [G_BN][G_KS]
    float* s_sb = s_sa + G_BN * G_KS;                 // [G_BN][G_KS]
    float* s_xs = s_sb + G_BN * G_KS;                 // [2][G_BM][G_KS]
    uint64_t* s_grid = (uint64_t*)(s_xs + 2 * G_BM * G_KS);  // [256]
    int* s_src = (int*)(s_grid + 256);                // [G_BM]
    constexpr int SPAN = TY == PT_Q2_K ? 1 : 2;       // 16-wide steps per scale
    int e = 0, row0, n_rows;
    if (a.tiles) {
        if ((int)blockIdx.y >= *a.n_tiles) return;
        e = a.tiles[3 * blockIdx.y];
        row0 = a.tiles[3 * blockIdx.y + 1];
        n_rows = a.tiles[3 * blockIdx.y + 2];
    } else {
        row0 = blockIdx.y * G_BM;
        n_rows = min(G_BM, a.M - row0);
    }
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int wm = warp & 3, wnb = (warp >> 2) * 64;
    const int n0 = blockIdx.x * G_BN;
    if (TY == PT_IQ2_XXS) {
        for (int i = tid; i < 256; i += blockDim.x) s_grid[i] = IQ2XXS_GRID[i];
    }
    if (tid < G_BM) {
        const int r = row0 + tid;
        s_src[tid] = tid < n_rows ? (a.gather ? a.gather[r] / a.gather_div : r) : -1;
    }
    __syncthreads();
    const int ar = tid >> 2, aq = tid & 3;
    const int asrc = s_src[ar];
    const size_t aoff = asrc >= 0 ? (size_t)blockIdx.z * a.gx + (size_t)asrc * a.ldx : 0;
    const int br = tid >> 1, bh = tid & 1;
    const int wn = n0 + br;
    const size_t wrow_idx = (size_t)(blockIdx.z + e) * a.N + (wn < a.N ? wn : 0);
    const uint8_t* wrow = TY == PT_Q8R ? a.w + wrow_idx * a.K : a.w + wrow_idx * a.w_row_bytes;
    const __half* srow = TY == PT_Q8R ? a.wscale + wrow_idx * (a.K / 32) : nullptr;

    auto load_a = [&](int k0, int stage) {
        const int k = k0 + 16 * aq;
        __half* dh = s_a + stage * G3_STAGE + ar * G_SA + 16 * aq;
        __half* dl = dh + G_BM * G_SA;
        if (asrc >= 0 && k < a.K) {
            cp_async16(dh, a.xh + aoff + k);
            cp_async16(dh + 8, a.xh + aoff + k + 8);
            cp_async16(dl, a.xl + aoff + k);
            cp_async16(dl + 8, a.xl + aoff + k + 8);
            if (TY == PT_Q2_K || TY == PT_Q4_K) cp_async4(s_xs + (stage * G_BM + ar) * G_KS + aq, a.xs + aoff / 16 + k / 16);
        } else {
            const uint4 z = make_uint4(0, 0, 0, 0);
            ((uint4*)dh)[0] = ((uint4*)dh)[1] = ((uint4*)dl)[0] = ((uint4*)dl)[1] = z;
            s_xs[(stage * G_BM + ar) * G_KS + aq] = 0.0f;
        }
    };
    WRaw raw[2];
    auto fetch_b = [&](int k0) {
#pragma unroll
        for (int sub = 0; sub < 2; sub++) {
            const int k = k0 + 16 * (bh + 2 * sub);
            if (wn < a.N && k < a.K) fetch_w16<TY>(wrow, srow, k, raw[sub]);
        }
    };
    auto store_b = [&](int k0) {
#pragma unroll
        for (int sub = 0; sub < 2; sub++) {
            const int ks = bh + 2 * sub;
            const int k = k0 + 16 * ks;
            float sa = 0.0f, sb = 0.0f;
            __half* d = s_b + br * G_SA + 16 * ks;
            if (wn < a.N && k < a.K) {
                decode_w16<TY>(raw[sub], k, s_grid, d, sa, sb);
            } else {
                ((uint4*)d)[0] = ((uint4*)d)[1] = make_uint4(0, 0, 0, 0);
            }
            s_sa[br * G_KS + ks] = sa;
            s_sb[br * G_KS + ks] = sb;
        }
    };

    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

    load_a(0, 0);
    cp_async_commit();
    fetch_b(0);
    int stage = 0;
    for (int k0 = 0; k0 < a.K; k0 += G_BK) {
        store_b(k0);
        cp_async_wait_all();
        __syncthreads();
        if (k0 + G_BK < a.K) {
            load_a(k0 + G_BK, stage ^ 1);
            cp_async_commit();
            fetch_b(k0 + G_BK);
        }
        const __half* sah = s_a + stage * G3_STAGE;
        const __half* sal = sah + G_BM * G_SA;
        const float* sxs = s_xs + stage * G_BM * G_KS;
        const int r0 = wm * 16 + g;
#pragma unroll
        for (int span = 0; span < G_KS / SPAN; span++) {
            uint32_t ah[SPAN][4], al[SPAN][4];
#pragma unroll
            for (int q = 0; q < SPAN; q++) {
                if constexpr (LDSM) {
                    // rows wm·16 + lane%16, columns +8 for lanes 16..31: matrices a0..a3 in order
                    const int off = (wm * 16 + (lane & 15)) * G_SA + (span * SPAN + q) * 16 + (lane >> 4) * 8;
                    ldsm_x4(ah[q], sah + off);
                    ldsm_x4(al[q], sal + off);
                } else {
                    const int kc = (span * SPAN + q) * 16 + 2 * t4;
                    ah[q][0] = *(const uint32_t*)(sah + r0 * G_SA + kc);
                    ah[q][1] = *(const uint32_t*)(sah + (r0 + 8) * G_SA + kc);
                    ah[q][2] = *(const uint32_t*)(sah + r0 * G_SA + kc + 8);
                    ah[q][3] = *(const uint32_t*)(sah + (r0 + 8) * G_SA + kc + 8);
                    al[q][0] = *(const uint32_t*)(sal + r0 * G_SA + kc);
                    al[q][1] = *(const uint32_t*)(sal + (r0 + 8) * G_SA + kc);
                    al[q][2] = *(const uint32_t*)(sal + r0 * G_SA + kc + 8);
                    al[q][3] = *(const uint32_t*)(sal + (r0 + 8) * G_SA + kc + 8);
                }
            }
            const int ks = span * SPAN;
            float xs0 = 0.0f, xs1 = 0.0f;
            if (TY == PT_Q2_K || TY == PT_Q4_K) {
#pragma unroll
                for (int q = 0; q < SPAN; q++) {
                    xs0 += sxs[r0 * G_KS + ks + q];
                    xs1 += sxs[(r0 + 8) * G_KS + ks + q];
                }
            }
            // B fragments of column tiles nt (even) and nt + 1: b0, b1 of each per k step
            static_assert(SPAN <= 2, "B fragments of at most two k steps held");
            uint32_t bf[2][4];
#pragma unroll
            for (int nt = 0; nt < 8; nt++) {
                if (LDSM && nt % 2 == 0) {
#pragma unroll
                    for (int q = 0; q < SPAN; q++) {
                        // lanes 0-7: columns 0-7 at k; 8-15: columns 0-7 at k+8; 16-31: columns 8-15
                        const int row = wnb + nt * 8 + (lane & 7) + ((lane >> 4) << 3);
                        ldsm_x4(bf[q], s_b + row * G_SA + (span * SPAN + q) * 16 + ((lane >> 3) & 1) * 8);
                    }
                }
                const int nb = wnb + nt * 8 + g;
                float tmp[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
                for (int q = 0; q < SPAN; q++) {
                    uint32_t b0, b1;
                    if constexpr (LDSM) {
                        b0 = bf[q][2 * (nt & 1)];
                        b1 = bf[q][2 * (nt & 1) + 1];
                    } else {
                        const int kc = (span * SPAN + q) * 16 + 2 * t4;
                        b0 = *(const uint32_t*)(s_b + nb * G_SA + kc);
                        b1 = *(const uint32_t*)(s_b + nb * G_SA + kc + 8);
                    }
                    mma16816(tmp, ah[q], b0, b1);
                    mma16816(tmp, al[q], b0, b1);
                }
                if (TY == PT_F16) {
                    acc[nt][0] += tmp[0];
                    acc[nt][1] += tmp[1];
                    acc[nt][2] += tmp[2];
                    acc[nt][3] += tmp[3];
                } else {
                    const int c0 = wnb + nt * 8 + 2 * t4;
                    const float sa0 = s_sa[c0 * G_KS + ks], sa1 = s_sa[(c0 + 1) * G_KS + ks];
                    acc[nt][0] += sa0 * tmp[0];
                    acc[nt][1] += sa1 * tmp[1];
                    acc[nt][2] += sa0 * tmp[2];
                    acc[nt][3] += sa1 * tmp[3];
                    if (TY == PT_Q2_K || TY == PT_Q4_K) {
                        const float sb0 = s_sb[c0 * G_KS + ks], sb1 = s_sb[(c0 + 1) * G_KS + ks];
                        acc[nt][0] -= sb0 * xs0;
                        acc[nt][1] -= sb1 * xs0;
                        acc[nt][2] -= sb0 * xs1;
                        acc[nt][3] -= sb1 * xs1;
                    }
                }
            }
        }
        __syncthreads();
        stage ^= 1;
    }
    float* yg = a.y + (size_t)blockIdx.z * a.gy;
#pragma unroll
    for (int nt = 0; nt < 8; nt++) {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const int r = wm * 16 + g + (q >= 2 ? 8 : 0);
            const int n = n0 + wnb + nt * 8 + 2 * t4 + (q & 1);
            if (r < n_rows && n < a.N) {
                float v = acc[nt][q] * a.alpha;
                const size_t gr = (size_t)(row0 + r);
                if (a.add) v = a.add[gr * a.ldadd + n] + v;
                yg[gr * a.ldy + n] = v;
            }
        }
    }
}

#define PF_GEMM3(SUFFIX, TY)                                                                          \
    extern "C" __global__ void __launch_bounds__(256, 2) pf_gemm3_##SUFFIX(PfGemmArgs a) {            \
        gemm_body3<TY, false>(a);                                                                     \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(256, 2) pf_gemm4_##SUFFIX(PfGemmArgs a) {            \
        gemm_body3<TY, true>(a);                                                                      \
    }
PF_GEMM3(q8r, PT_Q8R)
PF_GEMM3(f16, PT_F16)
PF_GEMM3(iq2_xxs, PT_IQ2_XXS)
PF_GEMM3(q2_k, PT_Q2_K)
PF_GEMM3(q4_k, PT_Q4_K)

#define PF_GEMM(SUFFIX, TY) \
    extern "C" __global__ void __launch_bounds__(256, 2) pf_gemm_##SUFFIX(PfGemmArgs a) { gemm_body<TY>(a); }
PF_GEMM(q8r, PT_Q8R)
PF_GEMM(f16, PT_F16)
PF_GEMM(iq2_xxs, PT_IQ2_XXS)
PF_GEMM(q2_k, PT_Q2_K)
PF_GEMM(q4_k, PT_Q4_K)

// F32 weights (none of the model's matrices; kept for completeness): one thread per output, f32
// fma over k in order. Dense mode only.
extern "C" __global__ void pf_gemm_f32(PfGemmArgs a) {
    const int n = blockIdx.x * blockDim.x + threadIdx.x;
    const int r = blockIdx.y;
    if (n >= a.N || r >= a.M) return;
    const float* xg = a.x + (size_t)blockIdx.z * a.gx;
    const int src = a.gather ? a.gather[r] / a.gather_div : r;
    const float* x = xg + (size_t)src * a.ldx;
    const float xmul = a.rowscale ? a.rowscale[r] : 1.0f;
    const float* w = (const float*)(a.w + ((size_t)blockIdx.z * a.N + n) * a.w_row_bytes);
    float s = 0.0f;
    for (int k = 0; k < a.K; k++) s += w[k] * (x[k] * xmul);
    float v = s * a.alpha;
    if (a.add) v = a.add[(size_t)r * a.ldadd + n] + v;
    a.y[(size_t)blockIdx.z * a.gy + (size_t)r * a.ldy + n] = v;
}

// ---- embedding, norms, hyper-connections (spec §3.3, §3.4) ---------------------------------------

extern "C" __global__ void pf_embed(const __half* token_embd, const int* tokens, float* X, int n_embd, int n_hc) {
    const int t = blockIdx.y;
    const size_t row = (size_t)tokens[t] * n_embd;
    float* xt = X + (size_t)t * n_hc * n_embd;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n_embd; i += gridDim.x * blockDim.x) {
        const float e = __half2float(token_embd[row + i]);
        for (int h = 0; h < n_hc; h++) xt[(size_t)h * n_embd + i] = e;
    }
}

// out[t] = 1/sqrt(mean(x_t²) + eps), one block per token.
extern "C" __global__ void pf_rms_rows(const float* x, int n, float eps, float* out) {
    __shared__ double red[32];
    const float s = block_rms_scale(x + (size_t)blockIdx.x * n, n, eps, red);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// The decode hc_pre (kernels/ops.cu) for token blockIdx.x: mix [T][mixw], X [T][n_hc·n_embd],
// hcw [T][mixw], xa [T][n_embd]. Dynamic shared memory: n_embd floats.
extern "C" __global__ void pf_hc_pre(const float* mix, const float* scale, const float* base, const float* X,
                                     const float* norm_w, float* hcw, float* xa, int n_embd, int n_hc,
                                     int sinkhorn_iters, float hc_eps, float rms_eps) {
    extern __shared__ float u[];
    __shared__ float w[2 * 8 + 64];
    __shared__ double red[32];
    const int mixw = 2 * n_hc + n_hc * n_hc;
    const size_t t = blockIdx.x;
    mix += t * mixw;
    X += t * n_hc * n_embd;
    hcw += t * mixw;
    xa += t * n_embd;
    hc_split(mix, scale, base, w, hcw, n_hc, sinkhorn_iters, hc_eps);
    __syncthreads();
    for (int d = threadIdx.x; d < n_embd; d += blockDim.x) {
        float s = 0.0f;
        for (int h = 0; h < n_hc; h++) s += w[h] * X[(size_t)h * n_embd + d];
        u[d] = s;
    }
    __syncthreads();
    const float sc = block_rms_scale(u, n_embd, rms_eps, red);
    for (int d = threadIdx.x; d < n_embd; d += blockDim.x) xa[d] = (u[d] * sc) * norm_w[d];
}

// HC post for token blockIdx.y: X[c][d] = post_c·y[d] + Σ_r M[r][c]·X[r][d], in place.
extern "C" __global__ void pf_hc_post(float* X, const float* y, const float* hcw, int n_embd, int n_hc) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= n_embd) return;
    const size_t t = blockIdx.y;
    const int mixw = 2 * n_hc + n_hc * n_hc;
    X += t * n_hc * n_embd;
    y += t * n_embd;
    hcw += t * mixw;
    float xin[8];
    for (int r = 0; r < n_hc; r++) xin[r] = X[(size_t)r * n_embd + d];
    const float* post = hcw + n_hc;
    const float* M = hcw + 2 * n_hc;
    for (int c = 0; c < n_hc; c++) {
        float s = post[c] * y[d];
        for (int r = 0; r < n_hc; r++) s += M[r * n_hc + c] * xin[r];
        X[(size_t)c * n_embd + d] = s;
    }
}

// ---- attention projections (spec §3.5 A4-A8) -----------------------------------------------------

// Unweighted RMSNorm of head blockIdx.x of token blockIdx.y, then RoPE at pos0 + token.
extern "C" __global__ void pf_head_norm_rope(float* q, int n_head, int head_dim, RopeArgs rope, int pos0, float eps) {
    __shared__ double red[32];
    float* v = q + ((size_t)blockIdx.y * n_head + blockIdx.x) * head_dim;
    const float s = block_rms_scale(v, head_dim, eps, red);
    __syncthreads();
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) v[i] = v[i] * s;
    __syncthreads();
    rope_tail_block(v, head_dim, rope, (float)(pos0 + (int)blockIdx.y), false);
}

// A5-A8 for token blockIdx.x: RMSNorm ⊙ w, RoPE, FP8 on the non-RoPE dims, f16 round, into the
// chunk's row buffer kvc [T][head_dim] (the ring is written after attention). Smem: head_dim floats.
extern "C" __global__ void pf_kv_finish(const float* kv_raw, const float* norm_w, RopeArgs rope, int pos0, float* kvc,
                                        int head_dim, float eps) {
    extern __shared__ float v[];
    __shared__ double red[32];
    __shared__ float scales[64];
    const size_t t = blockIdx.x;
    kv_raw += t * head_dim;
    const float s = block_rms_scale(kv_raw, head_dim, eps, red);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) v[i] = (kv_raw[i] * s) * norm_w[i];
    __syncthreads();
    rope_tail_block(v, head_dim, rope, (float)(pos0 + (int)t), false);
    __syncthreads();
    const int n_fp8 = (head_dim - rope.n_rot) / 64;
    quant_sim_blocks(v, n_fp8, 64, 448.0f, 1e-4f, scales);
    __syncthreads();
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) kvc[t * head_dim + i] = f16_round(v[i]);
}

// The last min(T, raw_cap) chunk rows into the ring (row of position p is p mod raw_cap).
extern "C" __global__ void pf_ring_store(const float* kvc, float* ring, int pos0, int n_tok, int raw_cap, int head_dim) {
    const int first = max(0, n_tok - raw_cap);
    const int t = first + blockIdx.x;
    if (t >= n_tok) return;
    float* dst = ring + (size_t)((pos0 + t) % raw_cap) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) dst[i] = kvc[(size_t)t * head_dim + i];
}

// ---- compressor (spec §3.5 C1-C9) ----------------------------------------------------------------

// C2-C4 for every row the chunk emits, in parallel: emitted row blockIdx.y (at position
// q = first_pos + blockIdx.y·R), column j. A window token at position p reads the chunk's
// projections when p >= pos0, else the frontier state as it was at the chunk's start (the
// current window's rows R+i (coff 2) or i (coff 1); with coff 2, a previous window that completed
// before the chunk sits in rows 0..R). Same values and the same summation order as the decode
// compressor_step walking the tokens one by one.
extern "C" __global__ void pf_comp_pool(const float* kvp, const float* scp, const __half* ape, const float* state_kv,
                                        const float* state_sc, float* pooled, int pos0, int first_pos, int R, int coff,
                                        int D) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= D) return;
    const int W = coff * D;
    const int q = first_pos + (int)blockIdx.y * R;
    const int cur0 = q - R + 1;  // first position of the emitting window
    // Token of window-phase i: (kv, score) at column c.
    auto cur = [&](int i, int c, float& kv, float& sc) {
        const int p = cur0 + i;
        if (p >= pos0) {
            kv = kvp[(size_t)(p - pos0) * W + c];
            sc = scp[(size_t)(p - pos0) * W + c] + __half2float(ape[(size_t)i * W + c]);
        } else {
            const int row = coff == 2 ? R + i : i;
            kv = state_kv[(size_t)row * W + c];
            sc = state_sc[(size_t)row * W + c];
        }
    };
    auto prev = [&](int i, float& kv, float& sc) {  // coff 2: previous window, columns [0, D)
        const int p = cur0 - R + i;
        if (p >= pos0) {
            kv = kvp[(size_t)(p - pos0) * W + j];
            sc = scp[(size_t)(p - pos0) * W + j] + __half2float(ape[(size_t)i * W + j]);
        } else {
            const int row = (q - R) < pos0 ? i : R + i;
            kv = state_kv[(size_t)row * W + j];
            sc = state_sc[(size_t)row * W + j];
        }
    };
    float mx = -3.0e38f;
    for (int i = 0; i < R; i++) {
        float kv, sc;
        if (coff == 2) {
            prev(i, kv, sc);
            mx = fmaxf(mx, sc);
            cur(i, D + j, kv, sc);
            mx = fmaxf(mx, sc);
        } else {
            cur(i, j, kv, sc);
            mx = fmaxf(mx, sc);
        }
    }
    float out = 0.0f;
    if (mx > -5.0e29f) {
        float num = 0.0f, den = 0.0f;
        for (int i = 0; i < R; i++) {
            if (coff == 2) {
                float kp, sp, kc, scc;
                prev(i, kp, sp);
                cur(i, D + j, kc, scc);
                const float wp = expf(sp - mx);
                const float wc = expf(scc - mx);
                den += wp + wc;
                num += wp * kp;
                num += wc * kc;
            } else {
                float kv, sc;
                cur(i, j, kv, sc);
                const float w = expf(sc - mx);
                den += w;
                num += w * kv;
            }
        }
        out = num / den;
    }
    pooled[(size_t)blockIdx.y * D + j] = out;
}

// The frontier state after the chunk (C2 and C8), thread per (phase ph = blockIdx.y, column c):
// row ph (coff 1) or R+ph (coff 2) holds the latest token of that phase; with coff 2, rows 0..R hold
// the window of the chunk's last emission at `last_emit` (−1: none). Runs after pf_comp_pool.
extern "C" __global__ void pf_comp_state(const float* kvp, const float* scp, const __half* ape, float* state_kv,
                                         float* state_sc, int pos0, int n_tok, int last_emit, int R, int coff, int W) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int ph = blockIdx.y;
    if (c >= W) return;
    const int pos_end = pos0 + n_tok - 1;
    const int cur_row = coff == 2 ? R + ph : ph;
    const float old_kv = state_kv[(size_t)cur_row * W + c], old_sc = state_sc[(size_t)cur_row * W + c];
    const float ap = __half2float(ape[(size_t)ph * W + c]);
    if (coff == 2 && last_emit >= pos0) {
        const int p = last_emit - R + 1 + ph;
        float kv = old_kv, sc = old_sc;
        if (p >= pos0) {
            kv = kvp[(size_t)(p - pos0) * W + c];
            sc = scp[(size_t)(p - pos0) * W + c] + ap;
        }
        state_kv[(size_t)ph * W + c] = kv;
        state_sc[(size_t)ph * W + c] = sc;
    }
    const int p = pos_end - (((pos_end - ph) % R) + R) % R;  // latest position of phase ph
    if (p >= pos0) {
        state_kv[(size_t)cur_row * W + c] = kvp[(size_t)(p - pos0) * W + c];
        state_sc[(size_t)cur_row * W + c] = scp[(size_t)(p - pos0) * W + c] + ap;
    }
}

// spec §3.2 P7 on a 128-wide shared vector: Hadamard (Sylvester order), scale, FP4 in blocks of 32.
__device__ void pf_hadamard_fp4_128(float* v) {
    for (int s = 1; s < 128; s <<= 1) {
        __syncthreads();
        for (int i = threadIdx.x; i < 64; i += blockDim.x) {
            const int idx = (i / s) * 2 * s + (i % s);
            const float a = v[idx], b = v[idx + s];
            v[idx] = a + b;
            v[idx + s] = a - b;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 128; i += blockDim.x) v[i] *= 0.08838834764831845f;
    __syncthreads();
    __shared__ float scales[4];
    quant_sim_blocks(v, 4, 32, 6.0f, 7.052966104933725e-38f, scales);
}

// C5-C7, C9 for emitted row blockIdx.x (at position first_pos + blockIdx.x·R): RMSNorm ⊙ w, RoPE at
// the window's first position, FP8 (qat = 0) or Hadamard + FP4 (qat = 1), f16 round, append.
// Dynamic shared memory: D floats.
extern "C" __global__ void pf_comp_emit(const float* pooled, const float* norm_w, float* cache, RopeArgs rope,
                                        int first_pos, int R, int D, int qat, float eps) {
    extern __shared__ float row[];
    __shared__ double red[32];
    __shared__ float scales[64];
    const int pos = first_pos + (int)blockIdx.x * R;
    for (int j = threadIdx.x; j < D; j += blockDim.x) row[j] = pooled[(size_t)blockIdx.x * D + j];
    __syncthreads();
    const float sc = block_rms_scale(row, D, eps, red);
    __syncthreads();
    for (int j = threadIdx.x; j < D; j += blockDim.x) row[j] = (row[j] * sc) * norm_w[j];
    __syncthreads();
    rope_tail_block(row, D, rope, (float)(pos + 1 - R), false);
    __syncthreads();
    if (qat) {
        pf_hadamard_fp4_128(row);
    } else {
        quant_sim_blocks(row, (D - rope.n_rot) / 64, 64, 448.0f, 1e-4f, scales);
    }
    __syncthreads();
    float* dst = cache + (size_t)((pos + 1) / R - 1) * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) dst[j] = f16_round(row[j]);
}

// ---- indexer (spec §3.5 A10) ---------------------------------------------------------------------

// Head blockIdx.x of token blockIdx.y: RoPE at the token's position, then Hadamard + FP4.
extern "C" __global__ void pf_index_q_prep(float* qi, int n_idx_head, RopeArgs rope, int pos0) {
    __shared__ float v[128];
    float* h = qi + ((size_t)blockIdx.y * n_idx_head + blockIdx.x) * 128;
    for (int i = threadIdx.x; i < 128; i += blockDim.x) v[i] = h[i];
    __syncthreads();
    rope_tail_block(v, 128, rope, (float)(pos0 + (int)blockIdx.y), false);
    pf_hadamard_fp4_128(v);
    for (int i = threadIdx.x; i < 128; i += blockDim.x) h[i] = v[i];
}

// Scores of token t0 + blockIdx.y over its visible index rows, only for tokens that select (more
// than top_k rows): scores[blockIdx.y][c] = Σ_h max(0, K_c·qi_h)·w_h, heads ascending. Thread per
// row c (its 128 values streamed once), the token's queries in shared memory (read as broadcasts).
// Dynamic shared memory: n_idx_head·128 floats. n_idx_head ≤ 64.
extern "C" __global__ void __launch_bounds__(128)
    pf_index_scores(const float* index_cache, const float* qi, const float* w, int pos0, int t0, int ratio,
                    int n_idx_head, int top_k, float* scores, int cap) {
    extern __shared__ float qs[];
    const int t = t0 + blockIdx.y;
    const int n_comp = (pos0 + t + 1) / ratio;
    if (n_comp <= top_k || (int)(blockIdx.x * blockDim.x) >= n_comp) return;
    const float* qt = qi + (size_t)t * n_idx_head * 128;
    for (int i = threadIdx.x; i < n_idx_head * 128; i += blockDim.x) qs[i] = qt[i];
    __syncthreads();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= n_comp) return;
    const float4* k = (const float4*)(index_cache + (size_t)c * 128);
    float d[64];
#pragma unroll
    for (int h = 0; h < 64; h++) d[h] = 0.0f;
    for (int i = 0; i < 32; i++) {
        const float4 kv = __ldg(k + i);
#pragma unroll
        for (int h = 0; h < 64; h++) {
            if (h < n_idx_head) {
                const float4 q = *((const float4*)(qs + h * 128) + i);
                d[h] += kv.x * q.x + kv.y * q.y + kv.z * q.z + kv.w * q.w;
            }
        }
    }
    const float* wt = w + (size_t)t * n_idx_head;
    float s = 0.0f;
#pragma unroll
    for (int h = 0; h < 64; h++)
        if (h < n_idx_head) s += fmaxf(d[h], 0.0f) * wt[h];
    scores[(size_t)blockIdx.y * cap + c] = s;
}

// The same scores on the tensor cores (mma.cuh index_tile_*; the decode's index_select_mma runs
// the same code, so both paths score alike). Block: 128 rows of token t0 + blockIdx.y, 256 threads.
// Dynamic shared memory: IDX_MMA_SMEM.
extern "C" __global__ void __launch_bounds__(256)
    pf_index_scores_mma(const float* index_cache, const float* qi, const float* w, int pos0, int t0, int ratio,
                        int n_idx_head, int top_k, float* scores, int cap) {
    extern __shared__ __align__(16) unsigned char ix_smem[];
    const int t = t0 + blockIdx.y;
    const int n_comp = (pos0 + t + 1) / ratio;
    const int c0 = blockIdx.x * IDX_TILE;
    if (n_comp <= top_k || c0 >= n_comp) return;
    index_tile_stage(index_cache, qi + (size_t)t * n_idx_head * 128, n_idx_head, c0, n_comp, ix_smem);
    __syncthreads();
    if (threadIdx.x < 256)
        index_tile_scores(ix_smem, w + (size_t)t * n_idx_head, n_idx_head, c0, n_comp, scores + (size_t)blockIdx.y * cap);
}

// The decode top-k (index_select) for token t0 + blockIdx.y (only with more than top_k rows): the
// top_k highest scores, ties to the lower row, ascending, into list[t][top_k]. 1024 threads.
extern "C" __global__ void pf_index_topk(const float* scores, int pos0, int t0, int ratio, int top_k, int* list,
                                         int cap) {
    const int t = t0 + blockIdx.y;
    const int n = (pos0 + t + 1) / ratio;
    if (n <= top_k) return;
    topk_select(scores + (size_t)blockIdx.y * cap, n, top_k, list + (size_t)t * top_k);
}

// ---- attention (spec §3.5 A11-A12) ---------------------------------------------------------------


// Heads PF_HPB·blockIdx.x.. of token blockIdx.y (256 threads). Rows: raw window oldest first
// (positions before the chunk from the ring, the chunk's own from kvc), then the visible
// compressed rows (all, or the token's top-k list). Scores: thread per row, the row streamed once
// against the block's queries in shared memory (broadcast reads); softmax with the sink (warp per
// head); value = key: thread per output dim over the rows, four at a time, in order (fixed order,
// no atomics); inverse RoPE. Dynamic shared memory: PF_HPB·(head_dim + rows rounded up to 4) floats.
template <int PF_HPB>
__device__ void attention_body(const float* q, const float* ring, int raw_cap, const float* kvc, int pos0, const float* comp,
                 const int* list, const float* sinks, int n_head, int n_swa, int ratio, int top_k, int head_dim,
                 float kq_scale, RopeArgs rope, float* out) {
    extern __shared__ float sm[];
    __shared__ float inv[PF_HPB];
    const int t = blockIdx.y, h0 = blockIdx.x * PF_HPB;
    const int pos = pos0 + t;
    const int n_raw = min(pos + 1, n_swa);
    int n_comp = 0;
    bool use_list = false;
    if (ratio > 0) {
        n_comp = (pos + 1) / ratio;
        if (ratio == 4 && n_comp > top_k) {
            n_comp = top_k;
            use_list = true;
        }
    }
    const int n_rows = n_raw + n_comp;
    const int n_rows4 = (n_rows + 3) & ~3;  // score rows padded with zero weights
    float* qs = sm;
    float* sc = sm + PF_HPB * head_dim;
    const float* qt = q + ((size_t)t * n_head + h0) * head_dim;
    for (int i = threadIdx.x; i < PF_HPB * head_dim; i += blockDim.x) qs[i] = qt[i];
    __syncthreads();
    const int* lt = list + (size_t)t * top_k;
    auto row_ptr = [&](int j) -> const float* {
        if (j < n_raw) {
            const int p = pos - n_raw + 1 + j;
            return p >= pos0 ? kvc + (size_t)(p - pos0) * head_dim : ring + (size_t)(p % raw_cap) * head_dim;
        }
        return comp + (size_t)(use_list ? lt[j - n_raw] : j - n_raw) * head_dim;
    };
    for (int j = threadIdx.x; j < n_rows4; j += blockDim.x) {
        if (j >= n_rows) {
#pragma unroll
            for (int h = 0; h < PF_HPB; h++) sc[h * n_rows4 + j] = -3.0e38f;
            continue;
        }
        const float4* k = (const float4*)row_ptr(j);
        float s[PF_HPB];
#pragma unroll
        for (int h = 0; h < PF_HPB; h++) s[h] = 0.0f;
        for (int c = 0; c < head_dim / 4; c++) {
            const float4 a = __ldg(k + c);
#pragma unroll
            for (int h = 0; h < PF_HPB; h++) {
                const float4 b = *((const float4*)(qs + h * head_dim) + c);
                s[h] += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
            }
        }
#pragma unroll
        for (int h = 0; h < PF_HPB; h++) sc[h * n_rows4 + j] = s[h] * kq_scale;
    }
    __syncthreads();
    {  // softmax with the sink: warp per head
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = blockDim.x >> 5;
        for (int h = warp; h < PF_HPB; h += n_warp) {
            float* sh = sc + h * n_rows4;
            const float sink = sinks[h0 + h];
            float m = sink;
            for (int j = lane; j < n_rows; j += 32) m = fmaxf(m, sh[j]);
            const float mx = warp_max(m);
            float psum = 0.0f;
            for (int j = lane; j < n_rows4; j += 32) {
                const float e = j < n_rows ? expf(sh[j] - mx) : 0.0f;
                sh[j] = e;
                psum += e;
            }
            const float den = expf(sink - mx) + warp_sum(psum);
            if (lane == 0) inv[h] = 1.0f / den;
        }
    }
    __syncthreads();
    // Weighted sum: thread per output dim (head_dim ≤ 2·blockDim), four rows per step.
    float acc[PF_HPB][2];
#pragma unroll
    for (int h = 0; h < PF_HPB; h++) acc[h][0] = acc[h][1] = 0.0f;
    const int d0 = threadIdx.x, d1 = threadIdx.x + blockDim.x;
    const bool has0 = d0 < head_dim, has1 = d1 < head_dim;
    for (int j = 0; j < n_rows4; j += 4) {
        const float* k[4];
#pragma unroll
        for (int u = 0; u < 4; u++) k[u] = row_ptr(min(j + u, n_rows - 1));
        float k0[4], k1[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            k0[u] = has0 ? __ldg(k[u] + d0) : 0.0f;
            k1[u] = has1 ? __ldg(k[u] + d1) : 0.0f;
        }
#pragma unroll
        for (int h = 0; h < PF_HPB; h++) {
            const float4 w = *(const float4*)(sc + h * n_rows4 + j);
            acc[h][0] += w.x * k0[0] + w.y * k0[1] + w.z * k0[2] + w.w * k0[3];
            acc[h][1] += w.x * k1[0] + w.y * k1[1] + w.z * k1[2] + w.w * k1[3];
        }
    }
    __syncthreads();
#pragma unroll
    for (int h = 0; h < PF_HPB; h++) {
        if (has0) qs[h * head_dim + d0] = acc[h][0] * inv[h];
        if (has1) qs[h * head_dim + d1] = acc[h][1] * inv[h];
    }
    __syncthreads();
    // Inverse RoPE on every head's tail: thread per (head, pair).
    const int n_pair = rope.n_rot / 2, base = head_dim - rope.n_rot;
    for (int i = threadIdx.x; i < PF_HPB * n_pair; i += blockDim.x) {
        const int h = i / n_pair, kk = i % n_pair;
        float s, c;
        sincosf(rope_theta(rope, (float)pos, kk), &s, &c);
        s = -s;
        float* v = qs + h * head_dim + base;
        const float x0 = v[2 * kk], x1 = v[2 * kk + 1];
        v[2 * kk] = x0 * c - x1 * s;
        v[2 * kk + 1] = x0 * s + x1 * c;
    }
    __syncthreads();
    float* ot = out + ((size_t)t * n_head + h0) * head_dim;
    for (int i = threadIdx.x; i < PF_HPB * head_dim; i += blockDim.x) ot[i] = qs[i];
}

#define PF_ATTN_ARGS                                                                                            \
    const float *q, const float *ring, int raw_cap, const float *kvc, int pos0, const float *comp, const int *list, \
        const float *sinks, int n_head, int n_swa, int ratio, int top_k, int head_dim, float kq_scale, RopeArgs rope, \
        float *out
#define PF_ATTN_PASS q, ring, raw_cap, kvc, pos0, comp, list, sinks, n_head, n_swa, ratio, top_k, head_dim, kq_scale, rope, out
// Heads per block: they share every key row load (one KV head). 32 halves the key traffic per head
// where the scores of every row still fit in shared memory.
extern "C" __global__ void __launch_bounds__(256) pf_attention(PF_ATTN_ARGS) { attention_body<16>(PF_ATTN_PASS); }
extern "C" __global__ void __launch_bounds__(256) pf_attention32(PF_ATTN_ARGS) { attention_body<32>(PF_ATTN_PASS); }

// ---- attention on the tensor cores -----------------------------------------------------------
//
// Same rows, sink and inverse RoPE as attention_body, as a flash-style loop over row tiles: every
// row is a key and the value (one KV head for all query heads), so per token S = Q·Kᵀ and O = P·K
// are two small GEMMs with the heads as M. K rows are f16 values (f16-rounded when cached) and go
// to shared memory exactly; Q and P are split into hi + lo f16 halves (two mma each), so products
// keep ~22 bits as in the GEMMs. Softmax is online per tile (running max from the sink, running
// sum from exp(sink − max) = 1), each sum in a fixed shuffle tree: results repeat bit for bit.
//
// Block: HPB = 16·MT heads of token blockIdx.y, 8 warps; row tiles of TR = 64/MT rows, so both
// products split into exactly 8 warp pieces: S as (head tile, 8-row slice), O as (head tile, dim
// range of head_dim·MT/8). head_dim: a multiple of 128, at most 512 (launcher checks). Shared
// memory (attn_mma_smem in prefill.rs computes the same): Q hi, Q lo [HPB][hd+8] f16, the K tile
// [TR][hd+8] f16 (the +8 halves keep fragment loads and ldmatrix conflict-free), scores
// [HPB][TR+4] f32, P hi, P lo [HPB][TR+8] f16; the output is staged in the Q region at the end.

template <int MT>
__device__ void attention_mma_body(const float* q, const float* ring, int raw_cap, const float* kvc, int pos0,
                                   const float* comp, const int* list, const float* sinks, int n_head, int n_swa,
                                   int ratio, int top_k, int head_dim, float kq_scale, RopeArgs rope, float* out) {
    constexpr int HPB = 16 * MT, TR = 64 / MT, TPH = 256 / HPB, NT = 8 * MT;  // NT: O n-tiles per warp, max
    extern __shared__ __align__(16) unsigned char pf_smem[];
    __shared__ const float* rp[TR];
    __shared__ float alpha_s[HPB];
    __shared__ float linv_s[HPB];
    const int hds = head_dim + 8;
    __half* qh = (__half*)pf_smem;
    __half* ql = qh + HPB * hds;
    __half* kt = ql + HPB * hds;
    float* ss = (float*)(kt + TR * hds);
    __half* ph = (__half*)(ss + HPB * (TR + 4));
    __half* pl = ph + HPB * (TR + 8);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int t = blockIdx.y, h0 = blockIdx.x * HPB;
    const int pos = pos0 + t;
    const int n_raw = min(pos + 1, n_swa);
    int n_comp = 0;
    bool use_list = false;
    if (ratio > 0) {
        n_comp = (pos + 1) / ratio;
        if (ratio == 4 && n_comp > top_k) {
            n_comp = top_k;
            use_list = true;
        }
    }
    const int n_rows = n_raw + n_comp;
    const int* lt = list + (size_t)t * top_k;
    auto row_ptr = [&](int j) -> const float* {
        if (j < n_raw) {
            const int p = pos - n_raw + 1 + j;
            return p >= pos0 ? kvc + (size_t)(p - pos0) * head_dim : ring + (size_t)(p % raw_cap) * head_dim;
        }
        return comp + (size_t)(use_list ? lt[j - n_raw] : j - n_raw) * head_dim;
    };

    // Queries, split; the first tile's row addresses.
    const int c4 = head_dim / 4;
    const float* qt = q + ((size_t)t * n_head + h0) * head_dim;
    for (int i = tid; i < HPB * c4; i += 256) {
        const int h = i / c4, c = i - h * c4;
        const float4 v = __ldg((const float4*)qt + i);
        uint32_t h01, l01, h23, l23;
        pf_split2(v.x, v.y, h01, l01);
        pf_split2(v.z, v.w, h23, l23);
        *(uint2*)(qh + h * hds + 4 * c) = make_uint2(h01, h23);
        *(uint2*)(ql + h * hds + 4 * c) = make_uint2(l01, l23);
    }
    if (tid < TR) rp[tid] = tid < n_rows ? row_ptr(tid) : nullptr;

    // Per-head running max and sum, held (identically) by the head's TPH stats threads.
    const int sh = tid / TPH, ssub = tid - sh * TPH;
    float m_run = sinks[h0 + sh], l_run = 1.0f;
    // O accumulators: head tile omt, dims od0 + 8j.
    const int omt = warp % MT, odw = head_dim * MT / 8, od0 = (warp / MT) * odw, ont = odw / 8;
    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;

    const int n_tiles = (n_rows + TR - 1) / TR;
    for (int tile = 0; tile < n_tiles; tile++) {
        const int r0 = tile * TR;
        __syncthreads();  // rp ready; the previous tile's K, P and alpha no longer read
        // K tile: f32 rows (f16 values) to f16, eight 16-byte loads in flight per thread.
        for (int base = 0; base < TR * c4; base += 256 * 8) {
            float4 v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int i = base + u * 256 + tid;
                const int r = i / c4, c = i - r * c4;
                const float* src = i < TR * c4 ? rp[r] : nullptr;
                v[u] = src ? __ldg((const float4*)src + c) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int i = base + u * 256 + tid;
                if (i < TR * c4) {
                    const int r = i / c4, c = i - r * c4;
                    *(uint2*)(kt + r * hds + 4 * c) = make_uint2(pf_pack_h2(v[u].x, v[u].y), pf_pack_h2(v[u].z, v[u].w));
                }
            }
        }
        __syncthreads();
        {  // S = Q·Kᵀ for head tile smt, rows 8·snt..: two accumulator chains (even / odd k steps)
            const int smt = warp % MT, snt = warp / MT;
            const __half* qa = qh + (smt * 16 + g) * hds + 2 * t4;
            const __half* qb = ql + (smt * 16 + g) * hds + 2 * t4;
            const __half* kb = kt + (snt * 8 + g) * hds + 2 * t4;
            float c0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, c1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int k = 0; k < head_dim; k += 32) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int kk = k + 16 * e;
                    uint32_t ah[4], al[4];
                    lds_a_frag(ah, qa + kk, hds);
                    lds_a_frag(al, qb + kk, hds);
                    const uint32_t b0 = pf_lds32(kb + kk), b1 = pf_lds32(kb + kk + 8);
                    float* c = e ? c1 : c0;
                    mma16816(c, ah, b0, b1);
                    mma16816(c, al, b0, b1);
                }
            }
            const int row = snt * 8 + 2 * t4;
            const bool v0 = r0 + row < n_rows, v1 = r0 + row + 1 < n_rows;
            float* s0 = ss + (smt * 16 + g) * (TR + 4) + row;
            float* s1 = s0 + 8 * (TR + 4);
            s0[0] = v0 ? (c0[0] + c1[0]) * kq_scale : -3.0e38f;
            s0[1] = v1 ? (c0[1] + c1[1]) * kq_scale : -3.0e38f;
            s1[0] = v0 ? (c0[2] + c1[2]) * kq_scale : -3.0e38f;
            s1[1] = v1 ? (c0[3] + c1[3]) * kq_scale : -3.0e38f;
        }
        __syncthreads();
        {  // online softmax: TPH threads per head, four scores each
            const float4 s4 = *(const float4*)(ss + sh * (TR + 4) + 4 * ssub);
            float mx = fmaxf(fmaxf(s4.x, s4.y), fmaxf(s4.z, s4.w));
#pragma unroll
            for (int off = TPH / 2; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float m_new = fmaxf(m_run, mx);
            const float a = expf(m_run - m_new);
            const float p0 = expf(s4.x - m_new), p1 = expf(s4.y - m_new), p2 = expf(s4.z - m_new),
                        p3 = expf(s4.w - m_new);
            float ps = (p0 + p1) + (p2 + p3);
#pragma unroll
            for (int off = TPH / 2; off > 0; off >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
            l_run = l_run * a + ps;
            m_run = m_new;
            if (ssub == 0) alpha_s[sh] = a;
            uint32_t h01, l01, h23, l23;
            pf_split2(p0, p1, h01, l01);
            pf_split2(p2, p3, h23, l23);
            *(uint2*)(ph + sh * (TR + 8) + 4 * ssub) = make_uint2(h01, h23);
            *(uint2*)(pl + sh * (TR + 8) + 4 * ssub) = make_uint2(l01, l23);
        }
        __syncthreads();
        {  // O = O·alpha + P·K over this tile's rows; the next tile's row addresses meanwhile
            if (tid < TR) {
                const int j = r0 + TR + tid;
                rp[tid] = j < n_rows ? row_ptr(j) : nullptr;
            }
            const float a0 = alpha_s[omt * 16 + g], a1 = alpha_s[omt * 16 + g + 8];
#pragma unroll
            for (int j = 0; j < NT; j++) {
                o[j][0] *= a0;
                o[j][1] *= a0;
                o[j][2] *= a1;
                o[j][3] *= a1;
            }
            const __half* pa = ph + (omt * 16 + g) * (TR + 8) + 2 * t4;
            const __half* pb = pl + (omt * 16 + g) * (TR + 8) + 2 * t4;
            const __half* vb = kt + ((lane & 7) + ((lane >> 3) & 1) * 8) * hds + od0 + (lane >> 4) * 8;
#pragma unroll
            for (int ks = 0; ks < TR / 16; ks++) {
                uint32_t ah[4], al[4];
                lds_a_frag(ah, pa + 16 * ks, TR + 8);
                lds_a_frag(al, pb + 16 * ks, TR + 8);
#pragma unroll
                for (int jj = 0; jj < NT / 2; jj++) {
                    if (2 * jj < ont) {
                        uint32_t b[4];
                        ldsm_x4_trans(b, vb + 16 * ks * hds + 16 * jj);
                        mma16816(o[2 * jj], ah, b[0], b[1]);
                        mma16816(o[2 * jj], al, b[0], b[1]);
                        mma16816(o[2 * jj + 1], ah, b[2], b[3]);
                        mma16816(o[2 * jj + 1], al, b[2], b[3]);
                    }
                }
            }
        }
    }
    if (ssub == 0) linv_s[sh] = 1.0f / l_run;
    __syncthreads();  // every product done: the Q region takes the output
    float* of = (float*)pf_smem;
    {
        const float i0 = linv_s[omt * 16 + g], i1 = linv_s[omt * 16 + g + 8];
        float* o0 = of + (omt * 16 + g) * head_dim + od0 + 2 * t4;
        float* o1 = o0 + 8 * head_dim;
#pragma unroll
        for (int j = 0; j < NT; j++) {
            if (j < ont) {
                *(float2*)(o0 + 8 * j) = make_float2(o[j][0] * i0, o[j][1] * i0);
                *(float2*)(o1 + 8 * j) = make_float2(o[j][2] * i1, o[j][3] * i1);
            }
        }
    }
    __syncthreads();
    // Inverse RoPE on every head's tail: thread per (head, pair).
    const int n_pair = rope.n_rot / 2, rbase = head_dim - rope.n_rot;
    for (int i = tid; i < HPB * n_pair; i += 256) {
        const int h = i / n_pair, kk = i % n_pair;
        float s, c;
        sincosf(rope_theta(rope, (float)pos, kk), &s, &c);
        s = -s;
        float* v = of + h * head_dim + rbase;
        const float x0 = v[2 * kk], x1 = v[2 * kk + 1];
        v[2 * kk] = x0 * c - x1 * s;
        v[2 * kk + 1] = x0 * s + x1 * c;
    }
    __syncthreads();
    float4* ot = (float4*)(out + ((size_t)t * n_head + h0) * head_dim);
    for (int i = tid; i < HPB * c4; i += 256) ot[i] = ((const float4*)of)[i];
}

extern "C" __global__ void __launch_bounds__(256, 2) pf_attention_mma16(PF_ATTN_ARGS) {
    attention_mma_body<1>(PF_ATTN_PASS);
}
extern "C" __global__ void __launch_bounds__(256, 2) pf_attention_mma32(PF_ATTN_ARGS) {
    attention_mma_body<2>(PF_ATTN_PASS);
}

// ---- router and experts (spec §3.6 F2-F7) --------------------------------------------------------

// The decode route for token blockIdx.x: logits [T][n_expert] → sel, route_w [T][n_used].
extern "C" __global__ void pf_route(const float* logits, const float* bias, const int* tid2eid, const int* tokens,
                                    int n_expert, int n_used, float weight_scale, int* sel, float* route_w) {
    extern __shared__ float p[];
    const size_t t = blockIdx.x;
    route_select(logits + t * n_expert, bias, tid2eid ? tid2eid + (size_t)tokens[t] * n_used : nullptr, n_expert,
                 n_used, weight_scale, sel + t * n_used, route_w + t * n_used, p);
}

// Groups the chunk's (token, slot) pairs by expert: perm[i] = pair of sorted row i (experts
// ascending, pairs in order within an expert), inv[pair] = its row, and GEMM tiles of at most bm
// rows (expert, row0, n_rows). One block; deterministic. Dynamic shared memory: 2·n_expert ints.
extern "C" __global__ void pf_moe_sort(const int* sel, int n_pairs, int n_expert, int bm, int* perm, int* inv,
                                       int* tiles, int* n_tiles) {
    extern __shared__ int cnt[];
    int* off = cnt + n_expert;
    for (int e = threadIdx.x; e < n_expert; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n_pairs; i += blockDim.x) atomicAdd(&cnt[sel[i]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0, nt = 0;
        for (int e = 0; e < n_expert; e++) {
            off[e] = o;
            for (int r = 0; r < cnt[e]; r += bm) {
                tiles[3 * nt] = e;
                tiles[3 * nt + 1] = o + r;
                tiles[3 * nt + 2] = min(bm, cnt[e] - r);
                nt++;
            }
            o += cnt[e];
        }
        *n_tiles = nt;
    }
    __syncthreads();
    // Placement: warp per expert, pairs in order 32 at a time (ballot + prefix count).
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = blockDim.x >> 5;
    for (int e = warp; e < n_expert; e += n_warp) {
        int o = off[e];
        for (int i0 = 0; i0 < n_pairs; i0 += 32) {
            const int i = i0 + lane;
            const bool hit = i < n_pairs && sel[i] == e;
            const unsigned m = __ballot_sync(0xffffffffu, hit);
            if (hit) {
                const int at = o + __popc(m & ((1u << lane) - 1u));
                perm[at] = i;
                inv[i] = at;
            }
            o += __popc(m);
        }
    }
}

// F5/F6 mid: g[i][f] ← silu(min(g, c))·clamp(u, ±c)·route_w[perm[i]] (route weight optional).
extern "C" __global__ void pf_swiglu(float* g, const float* u, int n_rows, int ff, float clamp, const float* route_w,
                                     const int* perm) {
    const size_t n = (size_t)n_rows * ff;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float gv = fminf(g[i], clamp);
        const float uv = fminf(fmaxf(u[i], -clamp), clamp);
        float h = gv * sigmoid_stable(gv) * uv;
        if (route_w) h = h * route_w[perm[i / ff]];
        g[i] = h;
    }
}

// F7 for token blockIdx.y: out = Σ_k down_k (selection order) + shared.
extern "C" __global__ void pf_moe_sum(const float* down, const int* inv, const float* sh, float* out, int n_used,
                                      int n_embd) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= n_embd) return;
    const size_t t = blockIdx.y;
    float f = down[(size_t)inv[t * n_used] * n_embd + d];
    for (int k = 1; k < n_used; k++) f += down[(size_t)inv[t * n_used + k] * n_embd + d];
    out[t * n_embd + d] = f + sh[t * n_embd + d];
}
