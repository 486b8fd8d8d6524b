// Tensor-core helpers shared by the prefill and decode kernels: mma.sync m16n8k16 (f16 in, f32
// accumulate), ldmatrix, the hi + lo f16 split of f32 operands (each product keeps ~22 bits), and
// the indexer score tile (spec §3.5 A10.2) on the tensor cores.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

// Fragment layout (PTX ISA, m16n8k16 .row.col), g = lane/4, t = lane%4: a0 = A[g][2t, 2t+1],
// a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]; b0 = B[2t, 2t+1][g], b1 = B[2t+8..][g];
// c0, c1 = C[g][2t, 2t+1], c2, c3 = C[g+8][2t, 2t+1].
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ldmatrix .x4 (no transpose): lanes 8i..8i+7 give the row addresses of 8×8 matrix i; register i
// holds this lane's two halves of it (row lane/4, columns 2·(lane%4)), the mma fragment layout.
__device__ __forceinline__ void ldsm_x4(uint32_t* r, const __half* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

// ldmatrix .x4 .trans: lanes 8i..8i+7 give the row addresses of 8×8 matrix i; register i holds
// this lane's two halves of its transpose (rows 2·(lane%4), +1 of column lane/4).
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, const __half* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ uint32_t pf_pack_h2(float a, float b) {
    return (uint32_t)__half_as_ushort(__float2half_rn(a)) | ((uint32_t)__half_as_ushort(__float2half_rn(b)) << 16);
}

// hi = f16(v), lo = f16(v − hi) for two values, packed as mma operands.
__device__ __forceinline__ void pf_split2(float a, float b, uint32_t& hi, uint32_t& lo) {
    const float ah = __half2float(__float2half_rn(a)), bh = __half2float(__float2half_rn(b));
    hi = pf_pack_h2(ah, bh);
    lo = pf_pack_h2(a - ah, b - bh);
}

__device__ __forceinline__ uint32_t pf_lds32(const __half* p) { return *(const uint32_t*)p; }

// An A fragment from row-major f16 shared memory: `p` at this lane's row g, column 2t of the 16×16
// tile (rows `stride` halves apart): a0 = (g, 2t), a1 = (g+8, 2t), a2 = (g, 2t+8), a3 = (g+8, 2t+8).
__device__ __forceinline__ void lds_a_frag(uint32_t (&a)[4], const __half* p, int stride) {
    a[0] = pf_lds32(p);
    a[1] = pf_lds32(p + 8 * stride);
    a[2] = pf_lds32(p + 8);
    a[3] = pf_lds32(p + 8 * stride + 8);
}

// ---- indexer scores on the tensor cores ------------------------------------------------------
//
// Scores of 128 index rows for one query token: S = Qi·Kᵀ over 128 dims with the (up to 64,
// zero-padded to 16-head tiles) heads as M, then score_c = Σ_h max(0, S_hc)·w_h. Index rows are f16
// values (FP4-simulated and f16-rounded when cached), so K goes to shared memory exactly; the
// queries are split hi + lo. The head sum of a row runs over the lane's heads (tiles ascending, g
// before g + 8), then a fixed shuffle tree over the 8 lanes of a column: deterministic.
#define IDX_HS 136   // f16 row stride: 128 + 8 keeps fragment loads conflict-free
#define IDX_TILE 128 // rows per tile: 8 warps × 16
#define IDX_MMA_SMEM ((2 * 64 + IDX_TILE) * IDX_HS * 2)  // Q hi, Q lo [64][IDX_HS], K [IDX_TILE][IDX_HS]

// All threads of the block: the token's queries (qt: [n_idx_head][128]) split into hi + lo, and
// rows c0.. of the index cache (zeros past n_comp), into smem.
__device__ __forceinline__ void index_tile_stage(const float* index_cache, const float* qt, int n_idx_head, int c0,
                                                 int n_comp, unsigned char* smem) {
    __half* qh = (__half*)smem;
    __half* ql = qh + 64 * IDX_HS;
    __half* kt = ql + 64 * IDX_HS;
    const int mt_n = (n_idx_head + 15) / 16;
    for (int i = threadIdx.x; i < mt_n * 16 * 32; i += blockDim.x) {  // float4 i: head i/32
        const int h = i >> 5, c = i & 31;
        const float4 v = h < n_idx_head ? __ldg((const float4*)(qt + (size_t)h * 128) + c)
                                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        uint32_t h01, l01, h23, l23;
        pf_split2(v.x, v.y, h01, l01);
        pf_split2(v.z, v.w, h23, l23);
        *(uint2*)(qh + h * IDX_HS + 4 * c) = make_uint2(h01, h23);
        *(uint2*)(ql + h * IDX_HS + 4 * c) = make_uint2(l01, l23);
    }
    for (int i = threadIdx.x; i < IDX_TILE * 32; i += blockDim.x) {
        const int r = i >> 5, c = i & 31;
        // each row is read once per token: past L1
        const float4 v = c0 + r < n_comp ? __ldcg((const float4*)(index_cache + (size_t)(c0 + r) * 128) + c)
                                         : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        *(uint2*)(kt + r * IDX_HS + 4 * c) = make_uint2(pf_pack_h2(v.x, v.y), pf_pack_h2(v.z, v.w));
    }
}

// Warps 0-7 (after a barrier over the staging): warp w scores rows c0 + 16w.., out[c] for c < n_comp.
__device__ __forceinline__ void index_tile_scores(const unsigned char* smem, const float* wt, int n_idx_head, int c0,
                                                  int n_comp, float* out) {
    const __half* qh = (const __half*)smem;
    const __half* ql = qh + 64 * IDX_HS;
    const __half* kt = ql + 64 * IDX_HS;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const int mt_n = (n_idx_head + 15) / 16;
    float part[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};  // [column tile][row 2·t4 + e]
    for (int mt = 0; mt < mt_n; mt++) {
        float acc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
        const __half* qa = qh + (mt * 16 + g) * IDX_HS + 2 * t4;
        const __half* qb = ql + (mt * 16 + g) * IDX_HS + 2 * t4;
#pragma unroll
        for (int ks = 0; ks < 8; ks++) {
            const int k = 16 * ks;
            uint32_t ah[4], al[4];
            lds_a_frag(ah, qa + k, IDX_HS);
            lds_a_frag(al, qb + k, IDX_HS);
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const __half* kb = kt + (warp * 16 + nt * 8 + g) * IDX_HS + 2 * t4 + k;
                const uint32_t b0 = pf_lds32(kb), b1 = pf_lds32(kb + 8);
                mma16816(acc[nt], ah, b0, b1);
                mma16816(acc[nt], al, b0, b1);
            }
        }
        const int h0 = mt * 16 + g, h1 = h0 + 8;
        const float w0 = h0 < n_idx_head ? wt[h0] : 0.0f, w1 = h1 < n_idx_head ? wt[h1] : 0.0f;
#pragma unroll
        for (int nt = 0; nt < 2; nt++) {
            part[nt][0] += fmaxf(acc[nt][0], 0.0f) * w0 + fmaxf(acc[nt][2], 0.0f) * w1;
            part[nt][1] += fmaxf(acc[nt][1], 0.0f) * w0 + fmaxf(acc[nt][3], 0.0f) * w1;
        }
    }
#pragma unroll
    for (int nt = 0; nt < 2; nt++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            float v = part[nt][e];
#pragma unroll
            for (int o = 4; o < 32; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            const int c = c0 + warp * 16 + nt * 8 + 2 * t4 + e;
            if (g == 0 && c < n_comp) out[c] = v;
        }
}
