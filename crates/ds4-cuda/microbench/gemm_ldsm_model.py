#!/usr/bin/env python3
"""Checks kernels/prefill.cu gemm_body3<TY, true> (ldmatrix fragments) against gemm_body3<TY, false>
(32-bit shared loads): for every warp, lane, span, k step and column tile, the A and B fragment
registers must hold the same halves, so both variants give bit-identical results. The ldmatrix model
follows the PTX ISA: lanes 8i..8i+7 address the rows of matrix i; without .trans, lane L receives
row L/4, columns 2(L%4) and 2(L%4)+1 of each matrix, in register i.

    python3 crates/ds4-cuda/microbench/gemm_ldsm_model.py
"""
import numpy as np

G_BM, G_BN, G_SA, G_KS = 64, 128, 72, 4


def ldsm_x4(mem, addr):
    regs = [[None] * 4 for _ in range(32)]
    for i in range(4):
        rows = [addr[8 * i + r] for r in range(8)]
        assert all(a % 8 == 0 for a in rows), "row address not 16-byte aligned"
        for lane in range(32):
            a = rows[lane // 4] + 2 * (lane % 4)
            regs[lane][i] = (mem[a], mem[a + 1])
    return regs


def lds32(mem, i):
    assert i % 2 == 0
    return (mem[i], mem[i + 1])


def main():
    rng = np.random.default_rng(1)
    sah = rng.integers(0, 1 << 16, G_BM * G_SA)  # stand-ins for halves: unique-ish values
    s_b = rng.integers(0, 1 << 16, G_BN * G_SA)
    checked = 0
    for SPAN in (1, 2):
        for warp in range(8):
            wm, wnb = warp & 3, (warp >> 2) * 64
            for span in range(G_KS // SPAN):
                for q in range(SPAN):
                    # A: LDS version
                    lds_a = []
                    for lane in range(32):
                        g, t4 = lane >> 2, lane & 3
                        r0, kc = wm * 16 + g, (span * SPAN + q) * 16 + 2 * t4
                        lds_a.append([lds32(sah, r0 * G_SA + kc), lds32(sah, (r0 + 8) * G_SA + kc),
                                      lds32(sah, r0 * G_SA + kc + 8), lds32(sah, (r0 + 8) * G_SA + kc + 8)])
                    addr = [(wm * 16 + (lane & 15)) * G_SA + (span * SPAN + q) * 16 + (lane >> 4) * 8
                            for lane in range(32)]
                    assert ldsm_x4(sah, addr) == lds_a, (SPAN, warp, span, q)
                    # B: pairs of column tiles
                    for nt in range(0, 8, 2):
                        addr = [(wnb + nt * 8 + (lane & 7) + ((lane >> 4) << 3)) * G_SA + (span * SPAN + q) * 16
                                + ((lane >> 3) & 1) * 8 for lane in range(32)]
                        bf = ldsm_x4(s_b, addr)
                        for h in (0, 1):
                            for lane in range(32):
                                g, t4 = lane >> 2, lane & 3
                                nb, kc = wnb + (nt + h) * 8 + g, (span * SPAN + q) * 16 + 2 * t4
                                want = (lds32(s_b, nb * G_SA + kc), lds32(s_b, nb * G_SA + kc + 8))
                                got = (bf[lane][2 * h], bf[lane][2 * h + 1])
                                assert got == want, (SPAN, warp, span, q, nt + h, lane)
                                checked += 1
    # Bank conflicts: 8 row addresses of one matrix (stride G_SA halves = 144 B) hit 8 distinct
    # 4-bank groups.
    banks = {((r * G_SA * 2) // 4) % 32 // 4 for r in range(8)}
    assert len(banks) == 8, banks
    print(f"ok: {checked} B fragment lanes and every A fragment identical; ldmatrix rows conflict-free")


if __name__ == "__main__":
    main()
