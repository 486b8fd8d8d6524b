// Attention-side state kernels of the decode step: the compressor step (spec §3.5 C1-C9), the
// indexer (A10: query QAT, scores, top-k) and attention over raw window + compressed rows with the
// sink (A11) followed by the inverse RoPE (A12).
#include "blockops.cuh"
#include "mma.cuh"

// spec §3.2 P7 on a 128-wide vector in shared memory: Hadamard (Sylvester order), scale, then FP4
// in blocks of 32. Called by every thread of the block.
__device__ void hadamard_fp4_128(float* v) {
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

// One compressor step (spec §3.5 C1-C9) for stream width D, ratio R, coff = 1 or 2 (W = coff·D).
// kvp/scp: the kv and gate projections of xa (W each). ape: F16 [R][W]. State: KV and SC, coff·R
// rows of W. When (pos+1) mod R == 0 a row is pooled, normed, rotated, quantised (qat = 0: FP8,
// 1: Hadamard + FP4), f16-rounded and appended to `cache` as row (pos+1)/R − 1.
// `row`: D floats of shared memory.
struct CompressorArgs {
    const float* kvp;    // C1 projections of xa (W each)
    const float* scp;
    const __half* ape;   // F16 [R][W]
    const float* norm_w;
    float* state_kv;     // coff·R rows of W
    float* state_sc;
    float* cache;        // compressed rows of D
    int R, coff, D, qat;
};

__device__ void compressor_block(const CompressorArgs& c, float* row, RopeArgs rope, int pos, float eps) {
    __shared__ double red[32];
    const float* kvp = c.kvp;
    const float* scp = c.scp;
    const __half* ape = c.ape;
    const float* norm_w = c.norm_w;
    float* state_kv = c.state_kv;
    float* state_sc = c.state_sc;
    float* cache = c.cache;
    const int R = c.R, coff = c.coff, D = c.D, qat = c.qat;
    const int W = coff * D;
    const int p = pos % R;
    const int t = coff == 2 ? R + p : p;
    for (int j = threadIdx.x; j < W; j += blockDim.x) {
        state_kv[(size_t)t * W + j] = kvp[j];
        state_sc[(size_t)t * W + j] = scp[j] + __half2float(ape[(size_t)p * W + j]);
    }
    if ((pos + 1) % R != 0) return;
    __syncthreads();
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        float mx = -3.0e38f;
        if (coff == 2) {
            for (int i = 0; i < R; i++) {
                mx = fmaxf(mx, state_sc[(size_t)i * W + j]);
                mx = fmaxf(mx, state_sc[(size_t)(R + i) * W + D + j]);
            }
        } else {
            for (int i = 0; i < R; i++) mx = fmaxf(mx, state_sc[(size_t)i * W + j]);
        }
        float out = 0.0f;
        if (mx > -5.0e29f) {
            float num = 0.0f, den = 0.0f;
            for (int i = 0; i < R; i++) {
                if (coff == 2) {
                    const float wp = expf(state_sc[(size_t)i * W + j] - mx);
                    const float wc = expf(state_sc[(size_t)(R + i) * W + D + j] - mx);
                    den += wp + wc;
                    num += wp * state_kv[(size_t)i * W + j];
                    num += wc * state_kv[(size_t)(R + i) * W + D + j];
                } else {
                    const float w = expf(state_sc[(size_t)i * W + j] - mx);
                    den += w;
                    num += w * state_kv[(size_t)i * W + j];
                }
            }
            out = num / den;
        }
        row[j] = out;
    }
    __syncthreads();
    const float sc = block_rms_scale(row, D, eps, red);
    __syncthreads();
    for (int j = threadIdx.x; j < D; j += blockDim.x) row[j] = (row[j] * sc) * norm_w[j];
    __syncthreads();
    rope_tail_block(row, D, rope, (float)(pos + 1 - R), false);
    __syncthreads();
    if (qat) {
        hadamard_fp4_128(row);
    } else {
        const int n_fp8 = (D - rope.n_rot) / 64;
        __shared__ float scales[64];
        quant_sim_blocks(row, n_fp8, 64, 448.0f, 1e-4f, scales);
    }
    // C8: the current window's rows become the next window's "previous" rows.
    if (coff == 2) {
        for (int j = threadIdx.x; j < R * W; j += blockDim.x) {
            state_kv[j] = state_kv[(size_t)R * W + j];
            state_sc[j] = state_sc[(size_t)R * W + j];
        }
    }
    float* dst = cache + (size_t)((pos + 1) / R - 1) * D;
    for (int j = threadIdx.x; j < D; j += blockDim.x) dst[j] = f16_round(row[j]);
}

// spec §3.5 A10.2: the indexer query of one 128-wide head: RoPE on the tail at pos, then
// Hadamard + FP4. `v`: 128 floats of shared memory.
__device__ void index_q_block(float* h, float* v, RopeArgs rope, int pos) {
    for (int i = threadIdx.x; i < 128; i += blockDim.x) v[i] = h[i];
    __syncthreads();
    rope_tail_block(v, 128, rope, (float)pos, false);
    hadamard_fp4_128(v);
    for (int i = threadIdx.x; i < 128; i += blockDim.x) h[i] = v[i];
}

// spec §3.5 A4 + A6 for one q head: unweighted RMSNorm, then RoPE on its tail.
__device__ void q_head_block(float* v, int head_dim, RopeArgs rope, int pos, float eps) {
    __shared__ double red[32];
    // The sum of squares in the order of a 128-thread block (the prefill's pf_head_norm_rope and
    // the decode kernel before attn_prep), so both paths normalise to the same bits.
    double ss = 0.0;
    if (threadIdx.x < 128)
        for (int i = threadIdx.x; i < head_dim; i += 128) ss += (double)v[i] * (double)v[i];
    ss = block_sum_d(ss, red);
    const float s = 1.0f / sqrtf((float)(ss / (double)head_dim) + eps);
    __syncthreads();
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) v[i] = v[i] * s;
    __syncthreads();
    rope_tail_block(v, head_dim, rope, (float)pos, false);
}

// spec §3.5 A5-A8: kv = RMSNorm(kv_raw) ⊙ w, RoPE at pos, FP8 on the non-RoPE dims, f16 round,
// stored as raw-window row pos mod raw_cap. `v`: head_dim floats of shared memory.
__device__ void kv_block(const float* kv_raw, const float* norm_w, float* v, RopeArgs rope, int pos, float* ring,
                         int raw_cap, int head_dim, float eps) {
    __shared__ double red[32];
    const float s = block_rms_scale(kv_raw, head_dim, eps, red);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) v[i] = (kv_raw[i] * s) * norm_w[i];
    __syncthreads();
    rope_tail_block(v, head_dim, rope, (float)pos, false);
    __syncthreads();
    const int n_fp8 = (head_dim - rope.n_rot) / 64;
    __shared__ float scales[64];
    quant_sim_blocks(v, n_fp8, 64, 448.0f, 1e-4f, scales);
    __syncthreads();
    float* row = ring + (size_t)(pos % raw_cap) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) row[i] = f16_round(v[i]);
}

// Everything between a layer's projections and its attention that reads only those projections,
// in one launch (the steps are independent, so they run side by side instead of one after the
// other): blocks [0, n_head) finish a q head (A4, A6), block n_head the kv row (A5-A8), the next
// n_comp blocks a compressor step each (A9, A10.1), and the last n_idx_head blocks (ratio-4 layers
// with the indexer gate open) an indexer query head (A10.2). Dynamic shared memory: max(head_dim,
// the compressors' D) floats.
struct AttnPrepArgs {
    float* q;
    const float* kv_raw;
    const float* kv_norm_w;
    float* ring;
    float* qi;
    const int* gate;  // indexer gate (qi blocks do nothing when it is 0)
    const Step* step;
    CompressorArgs comp[2];
    RopeArgs rope;
    int n_head, head_dim, raw_cap, n_comp, n_idx_head;
    float eps;
};

// The host mirrors (launch.rs) check the same sizes and offsets.
static_assert(sizeof(CompressorArgs) == 72 && sizeof(AttnPrepArgs) == 256 && offsetof(AttnPrepArgs, rope) == 200,
              "AttnPrepArgs layout");

extern "C" __global__ void __launch_bounds__(256) attn_prep(AttnPrepArgs a) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float sv[];
    const int b = blockIdx.x, pos = a.step->pos;
    if (b < a.n_head) {
        q_head_block(a.q + (size_t)b * a.head_dim, a.head_dim, a.rope, pos, a.eps);
    } else if (b == a.n_head) {
        kv_block(a.kv_raw, a.kv_norm_w, sv, a.rope, pos, a.ring, a.raw_cap, a.head_dim, a.eps);
    } else if (b < a.n_head + 1 + a.n_comp) {
        compressor_block(a.comp[b - a.n_head - 1], sv, a.rope, pos, a.eps);
    } else if (*a.gate != 0) {
        index_q_block(a.qi + (size_t)(b - a.n_head - 1 - a.n_comp) * 128, sv, a.rope, pos);
    }
}

// spec §3.5 A10.2 selection in one launch: score_c = Σ_h max(0, K_c·qi_h)·w_h for every compressed
// index row c < n_comp, then the block that finishes last (a counter; which block it is decides
// nothing) selects the top_k rows, ascending, ties to the lower index (radix select). With the gate
// closed (n_comp <= top_k) every row is allowed. `counter`: a zeroed u32 that only this kernel
// touches (the last block resets it). Scores: a warp per row, heads summed in ascending order
// (index_select, 32 rows per block), or on the tensor cores (index_select_mma, IDX_TILE rows per
// block, mma.cuh: the prefill's pf_index_scores_mma scores alike; dynamic smem IDX_MMA_SMEM).
template <bool MMA>
__device__ void index_select_body(const float* index_cache, const float* qi, const float* w, const Step* step,
                                  const int* gate, int ratio, int n_idx_head, int top_k, float* scores, int* list,
                                  unsigned int* counter) {
    pdl_wait();
    pdl_trigger();
    __shared__ int is_last;
    const int n_comp = (step->pos + 1) / ratio;
    if (*gate == 0) {
        if (blockIdx.x == 0)
            for (int i = threadIdx.x; i < n_comp; i += blockDim.x) list[i] = i;
        return;
    }
    if constexpr (MMA) {
        extern __shared__ __align__(16) unsigned char ix_smem[];
        const int c0 = blockIdx.x * IDX_TILE;
        if (c0 < n_comp) {  // uniform over the block
            index_tile_stage(index_cache, qi, n_idx_head, c0, n_comp, ix_smem);
            __syncthreads();
            if (threadIdx.x < 256) index_tile_scores(ix_smem, w, n_idx_head, c0, n_comp, scores);
        }
    } else {
        const int c = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
        const int lane = threadIdx.x & 31;
        if (c < n_comp) {
            const float4 k = *((const float4*)(index_cache + (size_t)c * 128) + lane);
            float s = 0.0f;
            for (int h = 0; h < n_idx_head; h++) {
                const float4 q = *((const float4*)(qi + (size_t)h * 128) + lane);
                const float d = warp_sum(k.x * q.x + k.y * q.y + k.z * q.z + k.w * q.w);
                s += fmaxf(d, 0.0f) * w[h];
            }
            if (lane == 0) scores[c] = s;
        }
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    if (threadIdx.x == 0) *counter = 0u;
    topk_select(scores, n_comp, top_k, list);
}

extern "C" __global__ void __launch_bounds__(1024)
    index_select(const float* index_cache, const float* qi, const float* w, const Step* step, const int* gate,
                 int ratio, int n_idx_head, int top_k, float* scores, int* list, unsigned int* counter) {
    index_select_body<false>(index_cache, qi, w, step, gate, ratio, n_idx_head, top_k, scores, list, counter);
}
extern "C" __global__ void __launch_bounds__(1024)
    index_select_mma(const float* index_cache, const float* qi, const float* w, const Step* step, const int* gate,
                     int ratio, int n_idx_head, int top_k, float* scores, int* list, unsigned int* counter) {
    index_select_body<true>(index_cache, qi, w, step, gate, ratio, n_idx_head, top_k, scores, list, counter);
}

// Row j of the rows a token at `pos` attends to: the raw window (oldest first), then the visible
// compressed rows (all of them, or the indexer's list on ratio-4 layers).
__device__ __forceinline__ const float* attn_row(int j, int n_raw, int pos, int raw_cap, int head_dim,
                                                 const float* ring, const float* comp, const int* list, int ratio) {
    if (j < n_raw) return ring + (size_t)((pos - n_raw + 1 + j) % raw_cap) * head_dim;
    return comp + (size_t)(ratio == 4 ? list[j - n_raw] : j - n_raw) * head_dim;
}

// spec §3.5 A11-A12, split for the whole GPU: rows = raw window then the visible compressed rows;
// softmax with the sink in the denominator; value = key; then the inverse RoPE at pos. Block (g, s) takes ATT_HG heads
// and the s-th slice of the visible rows, so every key row is read once per head group (the KV rows
// are shared by all heads) and 16·n_split blocks share the work. Each block writes, per head, its
// slice's max m, sum l = Σ exp(score - m) and unnormalised output o = Σ exp(score - m)·row; the last
// block of a head group (a counter; the order of finishing decides nothing) combines the slices in
// slice order with the sink: M = max(sink, m_s), out = Σ_s e^(m_s-M)·o_s / (e^(sink-M) + Σ_s e^(m_s-M)·l_s),
// then the inverse RoPE. Row addresses are looked up once into shared memory, and the loads of
// several rows are in flight together (the slice is short; latency, not bandwidth, bounds it).
// Dynamic shared memory: slice_cap pointers, then ATT_HG·(slice_cap + head_dim) floats.
#define ATT_HG 4
#define ATT_UNROLL 8
extern "C" __global__ void __launch_bounds__(256)
    attention_split(const float* q, const float* ring, int raw_cap, const float* comp, const int* list,
                    const float* sinks, const Step* step, int n_swa, int ratio, int top_k, int head_dim,
                    float kq_scale, RopeArgs rope, float* out, float* part_o, float* part_ml,
                    unsigned int* counters, int slice_cap) {
    pdl_wait();
    pdl_trigger();
    extern __shared__ float sm[];
    const float** rows = (const float**)sm;                   // [slice_cap]
    float* p = (float*)(rows + slice_cap);                    // [ATT_HG][slice_cap] scores, then weights
    float* orow = p + ATT_HG * slice_cap;                     // [ATT_HG][head_dim] the combined rows
    __shared__ int is_last;
    const int g = blockIdx.x, s = blockIdx.y, n_split = gridDim.y;
    const int pos = step->pos;
    const int n_raw = min(pos + 1, n_swa);
    int n_comp = 0;
    if (ratio > 0) {
        n_comp = (pos + 1) / ratio;
        if (ratio == 4) n_comp = min(n_comp, top_k);
    }
    const int n_rows = n_raw + n_comp;
    const int per = (n_rows + n_split - 1) / n_split;
    const int j0 = min(n_rows, s * per), j1 = min(n_rows, j0 + per), nj = j1 - j0;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warp = blockDim.x >> 5;
    const int n_chunk = head_dim / 128;
    const int h0 = g * ATT_HG;
    for (int j = threadIdx.x; j < nj; j += blockDim.x)
        rows[j] = attn_row(j0 + j, n_raw, pos, raw_cap, head_dim, ring, comp, list, ratio);
    float4 qv[ATT_HG][4];
#pragma unroll
    for (int hh = 0; hh < ATT_HG; hh++)
#pragma unroll
        for (int c = 0; c < 4; c++)
            qv[hh][c] = c < n_chunk ? *((const float4*)(q + (size_t)(h0 + hh) * head_dim) + c * 32 + lane)
                                    : make_float4(0, 0, 0, 0);
    __syncthreads();
    // Scores: warps over rows (two rows' loads in flight), each row against the group's heads.
    for (int jb = warp; jb < nj; jb += 2 * n_warp) {
        float4 kv[2][4];
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int j = jb + u * n_warp;
#pragma unroll
            for (int c = 0; c < 4; c++)
                kv[u][c] = (j < nj && c < n_chunk) ? __ldg((const float4*)rows[j] + c * 32 + lane)
                                                   : make_float4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int j = jb + u * n_warp;
            float sc[ATT_HG];
#pragma unroll
            for (int hh = 0; hh < ATT_HG; hh++) {
                sc[hh] = 0.0f;
#pragma unroll
                for (int c = 0; c < 4; c++)
                    sc[hh] += kv[u][c].x * qv[hh][c].x + kv[u][c].y * qv[hh][c].y + kv[u][c].z * qv[hh][c].z +
                              kv[u][c].w * qv[hh][c].w;
            }
#pragma unroll
            for (int hh = 0; hh < ATT_HG; hh++) {
                const float v = warp_sum(sc[hh]);
                if (lane == 0 && j < nj) p[hh * slice_cap + j] = v * kq_scale;
            }
        }
    }
    __syncthreads();
    // Per head: slice max and weights (warp hh handles head hh).
    if (warp < ATT_HG) {
        float m = NEG_SENTINEL;
        for (int j = lane; j < nj; j += 32) m = fmaxf(m, p[warp * slice_cap + j]);
        m = warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < nj; j += 32) {
            const float e = expf(p[warp * slice_cap + j] - m);
            p[warp * slice_cap + j] = e;
            l += e;
        }
        l = warp_sum(l);
        if (lane == 0) {
            float* ml = part_ml + ((size_t)(h0 + warp) * n_split + s) * 2;
            ml[0] = nj > 0 ? m : NEG_SENTINEL;
            ml[1] = l;
        }
    }
    __syncthreads();
    // Values: threads over the row's elements, ATT_UNROLL rows' loads in flight, rows in order.
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float o[ATT_HG];
#pragma unroll
        for (int hh = 0; hh < ATT_HG; hh++) o[hh] = 0.0f;
        for (int jb = 0; jb < nj; jb += ATT_UNROLL) {
            float v[ATT_UNROLL];
#pragma unroll
            for (int u = 0; u < ATT_UNROLL; u++) v[u] = jb + u < nj ? __ldg(rows[jb + u] + d) : 0.0f;
#pragma unroll
            for (int u = 0; u < ATT_UNROLL; u++)
                if (jb + u < nj)
#pragma unroll
                    for (int hh = 0; hh < ATT_HG; hh++) o[hh] += p[hh * slice_cap + jb + u] * v[u];
        }
#pragma unroll
        for (int hh = 0; hh < ATT_HG; hh++) part_o[((size_t)(h0 + hh) * n_split + s) * head_dim + d] = o[hh];
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(counters + g, 1u) == (unsigned)n_split - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    if (threadIdx.x == 0) counters[g] = 0u;
    // Combine, all heads of the group at once: slice weights e^(m_s - M), then the outputs.
    __shared__ float wsl[ATT_HG][32];
    __shared__ float inv[ATT_HG];
    if (threadIdx.x < ATT_HG) {
        const int hh = threadIdx.x, h = h0 + hh;
        const float* ml = part_ml + (size_t)h * n_split * 2;
        const float sink = sinks[h];
        float M = sink;
        for (int t = 0; t < n_split; t++) M = fmaxf(M, __ldcg(ml + 2 * t));
        float den = expf(sink - M);
        for (int t = 0; t < n_split; t++) {
            const float e = expf(__ldcg(ml + 2 * t) - M);
            wsl[hh][t] = e;
            den += e * __ldcg(ml + 2 * t + 1);
        }
        inv[hh] = 1.0f / den;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < ATT_HG * head_dim; idx += blockDim.x) {
        const int hh = idx / head_dim, d = idx - hh * head_dim;
        const float* po = part_o + (size_t)(h0 + hh) * n_split * head_dim + d;
        float o = 0.0f;
#pragma unroll 16
        for (int t = 0; t < n_split; t++) o += wsl[hh][t] * __ldcg(po + (size_t)t * head_dim);
        orow[idx] = o * inv[hh];
    }
    __syncthreads();
    for (int hh = 0; hh < ATT_HG; hh++) rope_tail_block(orow + hh * head_dim, head_dim, rope, (float)pos, true);
    __syncthreads();
    for (int idx = threadIdx.x; idx < ATT_HG * head_dim; idx += blockDim.x) out[(size_t)h0 * head_dim + idx] = orow[idx];
}
