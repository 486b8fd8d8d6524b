#!/usr/bin/env python3
"""Lane-level model of kernels/mma.cuh index_tile_stage + index_tile_scores (the tensor-core
indexer scores of pf_index_scores_mma and index_select_mma) against a float64 reference, with the
mma m16n8k16 fragment layout of attn_mma_model.py.

    python3 crates/ds4-cuda/microbench/index_tile_model.py
"""
import numpy as np

from attn_mma_model import f16, lds32, mma16816

IDX_HS, IDX_TILE = 136, 128


def tile(index_cache, qt, w, n_idx_head, c0, n_comp, out):
    qh = np.full(64 * IDX_HS, np.nan, np.float16)
    ql = np.full(64 * IDX_HS, np.nan, np.float16)
    kt = np.full(IDX_TILE * IDX_HS, np.nan, np.float16)
    mt_n = (n_idx_head + 15) // 16
    for i in range(mt_n * 16 * 32):
        h, c = i >> 5, i & 31
        v = qt[h * 128 + 4 * c: h * 128 + 4 * c + 4] if h < n_idx_head else np.zeros(4, np.float32)
        hi = f16(v)
        qh[h * IDX_HS + 4 * c: h * IDX_HS + 4 * c + 4] = hi
        ql[h * IDX_HS + 4 * c: h * IDX_HS + 4 * c + 4] = f16(v - hi.astype(np.float32))
    for i in range(IDX_TILE * 32):
        r, c = i >> 5, i & 31
        v = index_cache[(c0 + r) * 128 + 4 * c:(c0 + r) * 128 + 4 * c + 4] if c0 + r < n_comp else np.zeros(4)
        kt[r * IDX_HS + 4 * c: r * IDX_HS + 4 * c + 4] = f16(v)
    for warp in range(8):
        part = [[[0.0, 0.0], [0.0, 0.0]] for _ in range(32)]
        for mt in range(mt_n):
            acc = [[[0.0] * 4 for _ in range(32)] for _ in range(2)]
            for ks in range(8):
                k = 16 * ks
                ah, al, bs = [], [], [[], []]
                for lane in range(32):
                    g, t4 = lane >> 2, lane & 3
                    qa = (mt * 16 + g) * IDX_HS + 2 * t4
                    ah.append([lds32(qh, qa + k), lds32(qh, qa + 8 * IDX_HS + k), lds32(qh, qa + k + 8),
                               lds32(qh, qa + 8 * IDX_HS + k + 8)])
                    al.append([lds32(ql, qa + k), lds32(ql, qa + 8 * IDX_HS + k), lds32(ql, qa + k + 8),
                               lds32(ql, qa + 8 * IDX_HS + k + 8)])
                    for nt in range(2):
                        kb = (warp * 16 + nt * 8 + g) * IDX_HS + 2 * t4 + k
                        bs[nt].append((lds32(kt, kb), lds32(kt, kb + 8)))
                for nt in range(2):
                    b0 = [b[0] for b in bs[nt]]
                    b1 = [b[1] for b in bs[nt]]
                    mma16816(acc[nt], ah, b0, b1)
                    mma16816(acc[nt], al, b0, b1)
            for lane in range(32):
                g = lane >> 2
                h0, h1 = mt * 16 + g, mt * 16 + g + 8
                w0 = w[h0] if h0 < n_idx_head else 0.0
                w1 = w[h1] if h1 < n_idx_head else 0.0
                for nt in range(2):
                    part[lane][nt][0] += max(acc[nt][lane][0], 0) * w0 + max(acc[nt][lane][2], 0) * w1
                    part[lane][nt][1] += max(acc[nt][lane][1], 0) * w0 + max(acc[nt][lane][3], 0) * w1
        for nt in range(2):
            for e in range(2):
                for lane in range(32):
                    g, t4 = lane >> 2, lane & 3
                    if g:
                        continue
                    v = sum(part[l2][nt][e] for l2 in range(32) if (l2 & 3) == t4)
                    c = c0 + warp * 16 + nt * 8 + 2 * t4 + e
                    if c < n_comp:
                        out[c] = v


def main():
    rng = np.random.default_rng(3)
    for n_idx_head, n_comp in ((8, 150), (64, 130), (48, 200)):
        cache = rng.uniform(-1, 1, n_comp * 128).astype(np.float16).astype(np.float32)
        qt = rng.uniform(-1, 1, n_idx_head * 128).astype(np.float32)
        w = rng.uniform(-1, 1, n_idx_head).astype(np.float32)
        out = np.full(n_comp, np.nan)
        for c0 in range(0, n_comp, IDX_TILE):
            tile(cache, qt, w, n_idx_head, c0, n_comp, out)
        K = cache.reshape(n_comp, 128).astype(np.float64)
        Q = qt.reshape(n_idx_head, 128).astype(np.float64)
        want = (np.maximum(K @ Q.T, 0) * w.astype(np.float64)).sum(axis=1)
        assert not np.isnan(out).any(), "row left unscored"
        rel = np.linalg.norm(out - want) / np.linalg.norm(want)
        print(f"{n_idx_head} heads, {n_comp} rows: relL2 {rel:.2e}")
        assert rel < 1e-5, rel
    print("ok")


if __name__ == "__main__":
    main()
