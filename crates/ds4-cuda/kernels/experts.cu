// Routed-expert matrix-vector kernels for decode (spec §3.6 F5) on the int8 tensor cores, reading
// the experts' raw GGUF blocks (IQ2_XXS / Q2_K / Q4_K, spec §5.2-5.4): the SwiGLU of the selected
// experts' gate/up rows, and the down projection summed over the experts in selection order.
//
// Why integers: every weight of these formats is a small integer times per-(sub)block scales, so a
// row chunk of 32 weights becomes 32 int8 values with cheap byte operations (IQ2_XXS: signed grid
// magnitudes; Q2_K: sc·q <= 45; Q4_K: q <= 15), and mma.m16n8k32.s8 does 512 of their products
// per instruction. The f32 input is written exactly enough as four int8 "digits" per element:
// per 256-element block a power-of-two scale S_b makes x/S_b an integer X with |X| <= 2^27
// (rounding error <= 2^-28 of the block's largest |x|), and X = D0·2^21 + D1·2^14 + D2·2^7 + D3
// with D0 in [-64, 64], D1..D3 in [0, 127]. The four digits are the mma's B columns 0-3, so one
// mma gives the exact integer dot of a 16-row by 32-element tile with all four digits. Integer
// sums are exact and order-free; only the per-block float scaling (f32, fixed order) rounds,
// so results repeat bit for bit and sit at f32-rounding distance from a float64 reference.
//
// Work split: a "piece" is 16 matrix rows by NBLK blocks, staged by a team of two warps into its
// shared-memory buffer with 16-byte cp.async (rows are 16-byte aligned and pieces start on 16-byte
// boundaries, so no load straddles), double buffered. A "task" is the set of pieces one output group
// needs: SwiGLU, 8 gate rows + the same 8 up rows of one selected expert (mma rows 0-7 and 8-15) over
// the K-parts of the row; down, 16 output rows over every (expert slot, K-part). Each CTA owns a
// contiguous range of tasks, spreads their pieces over its 8 teams, and after a barrier sums each
// task's piece partials in a fixed order (selection order for down) and writes the outputs.
//
// The K order inside an mma is free as long as A and B agree: thread t of a row quad (t = lane % 4)
// holds the 8 consecutive elements 8t..8t+7 of each 32-element chunk, in both A (bytes 0-3 in the
// k = 4t.. register, bytes 4-7 in the k = 16+4t.. register) and B.
#include "blocks.cuh"
#include "common.cuh"

enum { XTY_Q2_K = 10, XTY_Q4_K = 12, XTY_IQ2_XXS = 16 };
enum { XMODE_SWIGLU = 1, XMODE_DOWN = 2 };

// 16 warps in 8 teams of 2: a team stages one piece and each warp takes half of its blocks, so the
// SM has twice the warps without more staging memory. Measured on the H200, this runs as fast as 8
// warps with one piece each (Q2_K down 6 % slower): both are bound by the integer decode (about 47
// integer instructions per 512 weights per warp at ~2 IPC per SM), see BENCHMARKS.md.
constexpr int XWARPS = 16;
constexpr int XTEAMS = XWARPS / 2;
constexpr int XTHREADS = XWARPS * 32;

// Launch arguments (mirrored by `ExpArgs` in src/experts.rs; field order and types must match).
struct ExpArgs {
    const uint8_t* w;      // gate (SwiGLU) or down matrices, expert 0
    const uint8_t* w2;     // SwiGLU: up matrices
    const float* x;        // SwiGLU: one input of n_in; down: n_sel stacked inputs of n_in
    float* y;              // SwiGLU: n_sel stacked outputs of n_rows; down: n_rows
    const float* add;      // down: optional, added to y
    const int* sel;        // expert ids (optional for SwiGLU: expert 0 for every slot)
    const float* route_w;  // SwiGLU: optional route weights
    const int* gate;       // optional device flag: *gate == 0 skips the launch
    unsigned long long row_bytes;
    unsigned long long expert_bytes;
    int n_in;
    int n_rows;
    int n_sel;             // SwiGLU: slots; down: experts summed
    int n_tasks;
    int tasks_per_cta;
    int n_x;               // input vectors to convert: 1 (SwiGLU) or n_sel (down)
    float clamp;
    float alpha;
    unsigned int off_digits;    // shared-memory byte offsets (computed on the host)
    unsigned int off_scales;
    unsigned int off_partials;
    unsigned int off_stage;
};

// Per-type constants: BB bytes per block, NBLK blocks per piece (NBLK·BB is a multiple of 16, so
// pieces start 16-byte aligned), STRIDE the shared-memory row pitch (an odd multiple of 16 modulo
// 128, so the 8 rows a warp reads at once fall in different banks).
template <int TY> struct XT;
template <> struct XT<XTY_IQ2_XXS> { enum { BB = 66, NBLK = 8, STRIDE = 528 }; };
template <> struct XT<XTY_Q2_K> { enum { BB = 84, NBLK = 4, STRIDE = 336 }; };
template <> struct XT<XTY_Q4_K> { enum { BB = 144, NBLK = 4, STRIDE = 592 }; };
constexpr int NBUF = 2;

// IQ2_XXS lookup tables in shared memory, one copy per lane of a half warp (entry e of copy c at
// e·128 + 8c): the 8-byte loads of a half warp then hit 16 different bank pairs whatever the
// indices, where one shared copy would serialise on random conflicts.
constexpr int IQ2_GRID_BYTES = 256 * 128;  // grid magnitudes, u64 per entry
// Then the sign table: 128 × 128 bytes, 1 per negative lane, u64 per 7-bit sign code.

// Benchmark diagnostics (never defined in the build; compile a fatbin with one and time it through
// DS4_EXPERTS_FATBINS, see tests/experts.rs): EXPERTS_DIAG_NO_MMA replaces the mma by a few integer
// ops, EXPERTS_DIAG_NO_MEM skips the weight loads, EXPERTS_DIAG_NO_LUT skips the IQ2_XXS table
// lookups. The results are then wrong; only the timings of such builds mean something.
__device__ __forceinline__ void mma_s8(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1) {
#ifdef EXPERTS_DIAG_NO_MMA
    c[0] += (int)(a0 ^ b0);
    c[1] += (int)(a1 ^ b1);
    c[2] += (int)a2;
    c[3] += (int)a3;
    return;
#endif
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Expert weights are read once per token: evict them from L2 first, so they do not push out the
// activations, KV rows and the next dense launch's prefetched weights.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    uint64_t policy;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "l"(policy));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
__device__ __forceinline__ void cp_async_wait_1() { asm volatile("cp.async.wait_group 1;" ::: "memory"); }

__device__ __forceinline__ float xh2f(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }

// ---- input digits --------------------------------------------------------------------------------
//
// Layout: for 8-element group q of an input vector, digit n's 8 bytes at (q·4 + n)·8, so the lane
// that feeds B column n for group q reads one aligned 8-byte word. S_b (float) per 256-block.

__device__ __forceinline__ uint32_t pack_low_bytes(int a, int b, int c, int d) {
    return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

// Converts n_x vectors of n_in floats (n_in a multiple of 256) into digits; every warp of the CTA
// takes whole 256-blocks.
__device__ void make_digits(const float* __restrict__ x, int n_x, int n_in, uint8_t* digits, float* scales) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n_blk = n_x * (n_in >> 8);
    for (int b = warp; b < n_blk; b += XWARPS) {
        const float4 v0 = __ldg((const float4*)(x + (size_t)b * 256 + 8 * lane));
        const float4 v1 = __ldg((const float4*)(x + (size_t)b * 256 + 8 * lane + 4));
        const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
        float m = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; i++) m = fmaxf(m, fabsf(v[i]));
        // fmaxf drops NaN; keep it so that a NaN input gives NaN outputs as the float path would.
        bool bad = false;
#pragma unroll
        for (int i = 0; i < 8; i++) bad |= !isfinite(v[i]);
        m = warp_max(m);
        bad = __any_sync(0xffffffffu, bad);
        // amax in [2^(e-127), 2^(e-126)): X = rint(x·2^(153-e)) has |X| <= 2^27. e >= 27 keeps both
        // powers of two normal (inputs below 2^-100 round to zero digits).
        const int e = max((int)((__float_as_uint(m) >> 23) & 0xff), 27);
        const float mul = __uint_as_float((uint32_t)(280 - e) << 23);
        int q[8];
#pragma unroll
        for (int i = 0; i < 8; i++) q[i] = bad ? 0 : __float2int_rn(v[i] * mul);
        uint32_t out[8];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int* p = q + 4 * h;
            out[0 + h] = pack_low_bytes(p[0] >> 21, p[1] >> 21, p[2] >> 21, p[3] >> 21);
            out[2 + h] = pack_low_bytes(p[0] >> 14, p[1] >> 14, p[2] >> 14, p[3] >> 14) & 0x7f7f7f7fu;
            out[4 + h] = pack_low_bytes(p[0] >> 7, p[1] >> 7, p[2] >> 7, p[3] >> 7) & 0x7f7f7f7fu;
            out[6 + h] = pack_low_bytes(p[0], p[1], p[2], p[3]) & 0x7f7f7f7fu;
        }
        uint4* dst = (uint4*)(digits + ((size_t)b * 32 + lane) * 32);
        dst[0] = make_uint4(out[0], out[1], out[2], out[3]);
        dst[1] = make_uint4(out[4], out[5], out[6], out[7]);
        if (lane == 0) scales[b] = bad ? __int_as_float(0x7fc00000) : __uint_as_float((uint32_t)(e - 26) << 23);
    }
}

// B fragment of chunk `c` (32 elements) of the block whose digits start at `dg`: column g = digit g
// (g < 4), elements 8t..8t+7 of the chunk.
__device__ __forceinline__ uint2 load_b(const uint8_t* dg, int c, int g, int t) {
    if (g >= 4) return make_uint2(0, 0);
    return *(const uint2*)(dg + ((c * 4 + t) * 4 + g) * 8);
}

// ---- per-type block dots -------------------------------------------------------------------------
//
// Each adds, for the thread's rows r0 (= g) and r1 (= g + 8) and its two C columns, the block's
// integer dot times the block's float scales into acc[4] (C fragment order: r0c0, r0c1, r1c0, r1c1).

// Right shifts through __umulhi and byte broadcasts through multiplies (IMAD instead of SHF/LOP3):
// meant to relieve the ALU pipe; measured on the H200 it neither helped nor hurt.
__device__ __forceinline__ uint32_t shr_fma(uint32_t x, int k) { return k == 0 ? x : __umulhi(x, 1u << (32 - k)); }

struct Lane {
    int g, t;          // row in the quad group, thread in the quad
    uint32_t sel_t;    // __byte_perm selector of byte t, zeros above
    uint32_t rot_al;   // IQ2_XXS: rotation putting sign code t of an aligned a1 at bits 7-13
    uint32_t rot_mis;  // IQ2_XXS: funnel shift doing the same for an a1 2 bytes into a word pair
    unsigned tab_off;  // this lane's copy in the IQ2_XXS tables
    int hsel;          // Q2_K: 8·(t >> 1), the scale byte of this thread's half of a plane
};

template <int J>
__device__ __forceinline__ void block_iq2(const uint8_t* r0, const uint8_t* r1, const uint8_t* dg, float sb,
                                          const Lane& L, const uint8_t* grid, const uint8_t* sign, float (&acc)[4]) {
    constexpr int BASE = (66 * J) & ~15, O = (66 * J) & 15;
    uint32_t w[2][20];
#pragma unroll
    for (int k = 0; k < 5; k++) {
        const uint4 u0 = *(const uint4*)(r0 + BASE + 16 * k), u1 = *(const uint4*)(r1 + BASE + 16 * k);
        w[0][4 * k] = u0.x;
        w[0][4 * k + 1] = u0.y;
        w[0][4 * k + 2] = u0.z;
        w[0][4 * k + 3] = u0.w;
        w[1][4 * k] = u1.x;
        w[1][4 * k + 1] = u1.y;
        w[1][4 * k + 2] = u1.z;
        w[1][4 * k + 3] = u1.w;
    }
    float d[2];
#pragma unroll
    for (int r = 0; r < 2; r++) d[r] = xh2f((O & 2) ? (w[r][O >> 2] >> 16) : (w[r][O >> 2] & 0xffff));
    int ia[4] = {0, 0, 0, 0};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int rel = O + 2 + 8 * i, wi = rel >> 2;
        const bool sh = (rel & 3) != 0;
        uint32_t alo[2], ahi[2], mlo[2], mhi[2];
        int mult[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const uint32_t a0 = sh ? __byte_perm(w[r][wi], w[r][wi + 1], 0x5432) : w[r][wi];
            const uint32_t gi = __byte_perm(a0, 0, L.sel_t);
#ifdef EXPERTS_DIAG_NO_LUT
            const uint2 gv = make_uint2(gi, a0);
#else
            const uint2 gv = *(const uint2*)(grid + gi * 128u + L.tab_off);
#endif
            // Sign code t of a1 at bits 7-13, straight from the staged words; mult = 2·scale + 1.
            uint32_t sa;
            if (sh) {
                sa = __funnelshift_r(w[r][wi + 1], w[r][wi + 2], L.rot_mis);
                mult[r] = (int)__umulhi((w[r][wi + 2] & 0xf800u) | 0x0800u, 1u << 21);
            } else {
                sa = __funnelshift_r(w[r][wi + 1], w[r][wi + 1], L.rot_al);
                mult[r] = (int)__umulhi(w[r][wi + 1] | 0x08000000u, 32u);
            }
#ifdef EXPERTS_DIAG_NO_LUT
            const uint2 tv = make_uint2(sa & 0x01010101u, (sa >> 1) & 0x01010101u);
#else
            const uint2 tv = *(const uint2*)(sign + ((sa & 0x3f80u) | L.tab_off));
#endif
            // tv: 1 per negative lane. g ^ (0xff·tv) is -g-1 there; the second mma adds the 1.
            alo[r] = gv.x ^ (tv.x * 255u);
            ahi[r] = gv.y ^ (tv.y * 255u);
            mlo[r] = tv.x;
            mhi[r] = tv.y;
        }
        const uint2 b = load_b(dg, i, L.g, L.t);
        int c[4] = {0, 0, 0, 0};
        mma_s8(c, alo[0], alo[1], ahi[0], ahi[1], b.x, b.y);
        mma_s8(c, mlo[0], mlo[1], mhi[0], mhi[1], b.x, b.y);
        ia[0] += c[0] * mult[0];
        ia[1] += c[1] * mult[0];
        ia[2] += c[2] * mult[1];
        ia[3] += c[3] * mult[1];
    }
    // value = d·(2t+1)/8 · grid · sign (spec §5.4)
    const float f0 = d[0] * 0.125f * sb, f1 = d[1] * 0.125f * sb;
    acc[0] += f0 * (float)ia[0];
    acc[1] += f0 * (float)ia[1];
    acc[2] += f1 * (float)ia[2];
    acc[3] += f1 * (float)ia[3];
}

template <int J>
__device__ __forceinline__ void block_q2k(const uint8_t* r0, const uint8_t* r1, const uint8_t* dg, float sb,
                                          const Lane& L, float (&acc)[4]) {
    constexpr int OFF = 84 * J;
    const uint8_t* rr[2] = {r0 + OFF, r1 + OFF};
    uint32_t sc[2][4], dd[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
#pragma unroll
        for (int k = 0; k < 4; k++) sc[r][k] = *(const uint32_t*)(rr[r] + 4 * k);
        dd[r] = *(const uint32_t*)(rr[r] + 80);
    }
    // Elements 8t..8t+7 of a 32-element plane lie in sub-block 2j + (t >= 2) of the half: move
    // that scale byte to the bottom of each 16-bit half once.
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int k = 0; k < 4; k++) sc[r][k] >>= L.hsel;
    int cq[4] = {0, 0, 0, 0}, cm[4] = {0, 0, 0, 0};
#pragma unroll
    for (int h = 0; h < 2; h++) {
        uint32_t q0[2], q1[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            q0[r] = *(const uint32_t*)(rr[r] + 16 + 32 * h + 8 * L.t);
            q1[r] = *(const uint32_t*)(rr[r] + 20 + 32 * h + 8 * L.t);
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t alo[2], ahi[2], am[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const uint32_t s = shr_fma(sc[r][2 * h + (j >> 1)], 16 * (j & 1));
                const uint32_t scv = s & 15u, mv = shr_fma(s, 4) & 15u;
                alo[r] = (shr_fma(q0[r], 2 * j) & 0x03030303u) * scv;  // <= 45 per byte: no carries
                ahi[r] = (shr_fma(q1[r], 2 * j) & 0x03030303u) * scv;
                am[r] = mv * 0x01010101u;
            }
            const uint2 b = load_b(dg, 4 * h + j, L.g, L.t);
            mma_s8(cq, alo[0], alo[1], ahi[0], ahi[1], b.x, b.y);
            mma_s8(cm, am[0], am[1], am[0], am[1], b.x, b.y);
        }
    }
    // value = d·sc·q − dmin·m (spec §5.2)
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float d = xh2f(dd[r] & 0xffff) * sb, dm = xh2f(dd[r] >> 16) * sb;
        acc[2 * r] += d * (float)cq[2 * r] - dm * (float)cm[2 * r];
        acc[2 * r + 1] += d * (float)cq[2 * r + 1] - dm * (float)cm[2 * r + 1];
    }
}

__device__ __forceinline__ uint32_t sbyte4(const uint32_t (&s)[3], int i) { return (s[i >> 2] >> (8 * (i & 3))) & 0xffu; }

template <int J>
__device__ __forceinline__ void block_q4k(const uint8_t* r0, const uint8_t* r1, const uint8_t* dg, float sb,
                                          const Lane& L, float (&acc)[4]) {
    constexpr int OFF = 144 * J;
    const uint8_t* rr[2] = {r0 + OFF, r1 + OFF};
    uint32_t s[2][3], dd[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const uint4 hdr = *(const uint4*)rr[r];
        dd[r] = hdr.x;
        s[r][0] = hdr.y;
        s[r][1] = hdr.z;
        s[r][2] = hdr.w;
    }
    int ci[4] = {0, 0, 0, 0}, cm[4] = {0, 0, 0, 0};
#pragma unroll
    for (int c = 0; c < 4; c++) {
        uint2 q[2];
#pragma unroll
        for (int r = 0; r < 2; r++) q[r] = *(const uint2*)(rr[r] + 16 + 32 * c + 8 * L.t);
#pragma unroll
        for (int u = 0; u < 2; u++) {
            const int j = 2 * c + u;  // sub-block: low nibbles even, high nibbles odd (spec §5.3)
            uint32_t alo[2], ahi[2], am[2];
            int scv[2];
#pragma unroll
            for (int r = 0; r < 2; r++) {
                uint32_t sc, mn;
                if (j < 4) {
                    sc = sbyte4(s[r], j) & 63u;
                    mn = sbyte4(s[r], j + 4) & 63u;
                } else {
                    sc = (sbyte4(s[r], j + 4) & 15u) | ((sbyte4(s[r], j - 4) >> 6) << 4);
                    mn = (sbyte4(s[r], j + 4) >> 4) | ((sbyte4(s[r], j) >> 6) << 4);
                }
                alo[r] = (q[r].x >> (4 * u)) & 0x0f0f0f0fu;
                ahi[r] = (q[r].y >> (4 * u)) & 0x0f0f0f0fu;
                am[r] = mn * 0x01010101u;
                scv[r] = (int)sc;
            }
            const uint2 b = load_b(dg, j, L.g, L.t);
            int cc[4] = {0, 0, 0, 0};
            mma_s8(cc, alo[0], alo[1], ahi[0], ahi[1], b.x, b.y);
            mma_s8(cm, am[0], am[1], am[0], am[1], b.x, b.y);
            ci[0] += cc[0] * scv[0];
            ci[1] += cc[1] * scv[0];
            ci[2] += cc[2] * scv[1];
            ci[3] += cc[3] * scv[1];
        }
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const float d = xh2f(dd[r] & 0xffff) * sb, dm = xh2f(dd[r] >> 16) * sb;
        acc[2 * r] += d * (float)ci[2 * r] - dm * (float)cm[2 * r];
        acc[2 * r + 1] += d * (float)ci[2 * r + 1] - dm * (float)cm[2 * r + 1];
    }
}

template <int TY, int J>
__device__ __forceinline__ void block_dot(const uint8_t* r0, const uint8_t* r1, const uint8_t* dg, float sb,
                                          const Lane& L, const uint8_t* tables, float (&acc)[4]) {
    if constexpr (TY == XTY_IQ2_XXS) block_iq2<J>(r0, r1, dg, sb, L, tables, tables + IQ2_GRID_BYTES, acc);
    else if constexpr (TY == XTY_Q2_K) block_q2k<J>(r0, r1, dg, sb, L, acc);
    else block_q4k<J>(r0, r1, dg, sb, L, acc);
}

template <int TY, int J, int JEND>
__device__ __forceinline__ void piece_blocks(const uint8_t* buf, const uint8_t* dg, const float* sc, const Lane& L,
                                             const uint8_t* tables, float (&acc)[4]) {
    if constexpr (J < JEND) {
        block_dot<TY, J>(buf + L.g * XT<TY>::STRIDE, buf + (L.g + 8) * XT<TY>::STRIDE, dg + J * 1024, sc[J], L, tables,
                         acc);
        piece_blocks<TY, J + 1, JEND>(buf, dg, sc, L, tables, acc);
    }
}

__device__ __forceinline__ void team_sync(int team) { asm volatile("bar.sync %0, 64;" ::"r"(team + 1) : "memory"); }

// ---- the kernel ----------------------------------------------------------------------------------

// Where piece p (CTA-local) of this CTA reads from: its 16 rows, K-part and input digits.
struct Piece {
    int task;      // global task index
    int kpart;     // which NBLK-block slice of the row
    int slot;      // expert slot
    int row0;      // first output row of the task
};

template <int TY, int MODE>
__device__ __forceinline__ Piece piece_of(const ExpArgs& a, int t0, int p) {
    constexpr int NB = XT<TY>::NBLK;
    const int kparts = (a.n_in >> 8) / NB;
    Piece pc;
    if (MODE == XMODE_SWIGLU) {
        const int groups = (a.n_rows + 7) >> 3;
        pc.task = t0 + p / kparts;
        pc.kpart = p % kparts;
        pc.slot = pc.task / groups;
        pc.row0 = (pc.task % groups) * 8;
    } else {
        const int per_task = kparts * a.n_sel;
        pc.task = t0 + p / per_task;
        const int q = p % per_task;
        pc.slot = q / kparts;
        pc.kpart = q % kparts;
        pc.row0 = pc.task * 16;
    }
    return pc;
}

template <int TY, int MODE>
__device__ __forceinline__ const uint8_t* piece_row(const ExpArgs& a, const Piece& pc, int r) {
    const size_t eoff = a.sel ? (size_t)a.sel[pc.slot] * a.expert_bytes : 0;
    const size_t koff = (size_t)pc.kpart * XT<TY>::NBLK * XT<TY>::BB;
    if (MODE == XMODE_SWIGLU) {
        const int row = min(pc.row0 + (r & 7), a.n_rows - 1);  // dead rows recompute the last one
        return (r < 8 ? a.w : a.w2) + eoff + (size_t)row * a.row_bytes + koff;
    }
    const int row = min(pc.row0 + r, a.n_rows - 1);
    return a.w + eoff + (size_t)row * a.row_bytes + koff;
}

// Issues this warp's half of the 16-byte copies of one piece into `buf` and commits them as a
// group (an empty group when p is past the end, so the wait counts stay uniform).
template <int TY, int MODE>
__device__ __forceinline__ void stage_piece(const ExpArgs& a, int t0, int p, int n_pieces, uint8_t* buf, int half) {
    constexpr int CH = XT<TY>::NBLK * XT<TY>::BB / 16;  // 16-byte chunks per row
    const int lane = threadIdx.x & 31;
#ifdef EXPERTS_DIAG_NO_MEM
    p = n_pieces;
#endif
    if (p < n_pieces) {
        const Piece pc = piece_of<TY, MODE>(a, t0, p);
        for (int c = lane + 32 * half; c < 16 * CH; c += 64) {
            const int r = c / CH, k = c - r * CH;
            cp_async16(buf + r * XT<TY>::STRIDE + 16 * k, piece_row<TY, MODE>(a, pc, r) + 16 * k);
        }
    }
    cp_async_commit();
}

template <int TY, int MODE>
__device__ void experts_body(const ExpArgs& a) {
    extern __shared__ __align__(16) uint8_t smem[];
    if constexpr (TY == XTY_IQ2_XXS) {
        // The tables depend on nothing earlier kernels write: built while the previous kernel
        // finishes (programmatic dependent launch), before the wait.
        uint64_t* grid = (uint64_t*)smem;
        uint64_t* sign = (uint64_t*)(smem + IQ2_GRID_BYTES);
        for (int i = threadIdx.x; i < 256 * 16; i += XTHREADS) grid[i] = IQ2XXS_GRID[i >> 4];
        for (int i = threadIdx.x; i < 128 * 16; i += XTHREADS) {
            const uint32_t s7 = (uint32_t)(i >> 4);
            const uint32_t s8 = s7 | ((uint32_t)(__popc(s7) & 1) << 7);  // ksigns_iq2xs (spec §5.4)
            uint64_t m = 0;
#pragma unroll
            for (int k = 0; k < 8; k++)
                if ((s8 >> k) & 1u) m |= 1ull << (8 * k);
            sign[i] = m;
        }
    }
    pdl_wait();
    pdl_trigger();
    if (a.gate && *a.gate == 0) return;
    constexpr int NB = XT<TY>::NBLK;
    constexpr int STAGE = 16 * XT<TY>::STRIDE;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int team = warp >> 1, half = warp & 1;
    const int kparts = (a.n_in >> 8) / NB;
    const int ppt = MODE == XMODE_SWIGLU ? kparts : kparts * a.n_sel;  // pieces per task
    const int t0 = blockIdx.x * a.tasks_per_cta;
    const int n_tasks = min(a.tasks_per_cta, a.n_tasks - t0);
    if (n_tasks <= 0) return;
    const int n_pieces = n_tasks * ppt;
    uint8_t* stage = smem + a.off_stage + team * NBUF * STAGE;
    uint8_t* digits = smem + a.off_digits;
    float* scales = (float*)(smem + a.off_scales);
    float* partials = (float*)(smem + a.off_partials);

    // Weight loads first: they take the longest, and the digit set-up below hides in them.
#pragma unroll
    for (int b = 0; b < NBUF; b++) stage_piece<TY, MODE>(a, t0, team + b * XTEAMS, n_pieces, stage + b * STAGE, half);

    make_digits(a.x, a.n_x, a.n_in, digits, scales);
    __syncthreads();

    Lane L;
    L.g = lane >> 2;
    L.t = lane & 3;
    L.sel_t = 0x4440u | (uint32_t)L.t;
    L.rot_al = (uint32_t)(7 * L.t + 25) & 31u;
    L.rot_mis = (uint32_t)(9 + 7 * L.t);
    L.hsel = 8 * (L.t >> 1);
    L.tab_off = (unsigned)(lane & 15) * 8;
    // C column n carries digit n, of weight 2^(7·(3-n)); columns 4-7 are zero.
    const float wc0 = L.t == 0 ? 2097152.0f : (L.t == 1 ? 128.0f : 0.0f);
    const float wc1 = L.t == 0 ? 16384.0f : (L.t == 1 ? 1.0f : 0.0f);

    int it = 0;
    for (int p = team; p < n_pieces; p += XTEAMS, it++) {
        uint8_t* buf = stage + (it % NBUF) * STAGE;
        cp_async_wait_1();
        team_sync(team);  // both warps' copies of this piece have landed
        const Piece pc = piece_of<TY, MODE>(a, t0, p);
        const int xi = MODE == XMODE_SWIGLU ? 0 : pc.slot;
        const int blk0 = xi * (a.n_in >> 8) + pc.kpart * NB;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (half == 0) piece_blocks<TY, 0, NB / 2>(buf, digits + (size_t)blk0 * 1024, scales + blk0, L, smem, acc);
        else piece_blocks<TY, NB / 2, NB>(buf, digits + (size_t)blk0 * 1024, scales + blk0, L, smem, acc);
        float v0 = acc[0] * wc0 + acc[1] * wc1, v1 = acc[2] * wc0 + acc[3] * wc1;
        // Quad sum in a fixed order: (t0 + t1) + (t2 + t3).
        v0 += __shfl_xor_sync(0xffffffffu, v0, 1);
        v1 += __shfl_xor_sync(0xffffffffu, v1, 1);
        v0 += __shfl_xor_sync(0xffffffffu, v0, 2);
        v1 += __shfl_xor_sync(0xffffffffu, v1, 2);
        if (L.t == 0) {
            partials[(2 * p + half) * 16 + L.g] = v0;
            partials[(2 * p + half) * 16 + L.g + 8] = v1;
        }
        team_sync(team);  // both warps are done with buf before it is refilled
        stage_piece<TY, MODE>(a, t0, p + NBUF * XTEAMS, n_pieces, buf, half);
    }
    __syncthreads();

    if (MODE == XMODE_SWIGLU) {
        const int groups = (a.n_rows + 7) >> 3;
        for (int i = threadIdx.x; i < n_tasks * 8; i += XTHREADS) {
            const int lt = i >> 3, r = i & 7, task = t0 + lt;
            const int slot = task / groups, o = (task % groups) * 8 + r;
            if (o >= a.n_rows) continue;
            float g = 0.0f, u = 0.0f;
            for (int q = 0; q < ppt; q++) {
                const float* pp = partials + (lt * ppt + q) * 32;  // the piece's two halves
                g += pp[r] + pp[16 + r];
                u += pp[8 + r] + pp[24 + r];
            }
            // spec §3.6 F5: gate clamped from above only, up both ways; route weight last.
            g = fminf(g, a.clamp);
            u = fminf(fmaxf(u, -a.clamp), a.clamp);
            float h = g * sigmoid_stable(g) * u;
            if (a.route_w) h = h * a.route_w[slot];
            a.y[(size_t)slot * a.n_rows + o] = h;
        }
    } else {
        for (int i = threadIdx.x; i < n_tasks * 16; i += XTHREADS) {
            const int lt = i >> 4, r = i & 15, o = (t0 + lt) * 16 + r;
            if (o >= a.n_rows) continue;
            float total = 0.0f;
            for (int s = 0; s < a.n_sel; s++) {  // selection order
                float v = 0.0f;
                for (int k = 0; k < kparts; k++) {
                    const float* pp = partials + (lt * ppt + s * kparts + k) * 32;
                    v += pp[r] + pp[16 + r];
                }
                total += v;
            }
            float y = total * a.alpha;
            if (a.add) y = y + a.add[o];
            a.y[o] = y;
        }
    }
}

#define EXPERT_KERNELS(SUFFIX, TY)                                                                              \
    extern "C" __global__ void __launch_bounds__(XTHREADS, 1) experts_swiglu_##SUFFIX(ExpArgs a) {              \
        experts_body<TY, XMODE_SWIGLU>(a);                                                                       \
    }                                                                                                            \
    extern "C" __global__ void __launch_bounds__(XTHREADS, 1) experts_down_##SUFFIX(ExpArgs a) {                \
        experts_body<TY, XMODE_DOWN>(a);                                                                         \
    }

EXPERT_KERNELS(iq2_xxs, XTY_IQ2_XXS)
EXPERT_KERNELS(q2_k, XTY_Q2_K)
EXPERT_KERNELS(q4_k, XTY_Q4_K)
