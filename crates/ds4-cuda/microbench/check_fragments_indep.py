#!/usr/bin/env python3
"""Independent check (reviewer, not the kernels' author) of the fragment addressing of
attention_mma_body (S = Q.K^T with 32-bit loads, O = P.K with ldmatrix .x4 .trans) and of
gemm_body3<LDSM> (ldmatrix .x4 for A and B), against the PTX ISA definitions:

  mma.m16n8k16 .row.col f16: A regs a0:(g, 2t..2t+1) a1:(g+8, 2t..) a2:(g, 2t+8..) a3:(g+8, 2t+8..)
                             B regs b0:(k=2t..2t+1, n=g) b1:(k=2t+8.., n=g)
                             C c0,c1:(g, 2t..2t+1) c2,c3:(g+8, 2t..2t+1)
  ldmatrix .m8n8 .x4 .b16:   lanes 8i..8i+7 give row addresses r=0..7 of matrix i; register i of
                             lane l = (row l/4, cols 2(l%4), +1) of matrix i
  with .trans:               register i of lane l = (rows 2(l%4), 2(l%4)+1; col l/4) of matrix i

Shared memory is a flat array of f16 slots; every address is formed exactly as in the kernels.
"""
import numpy as np

rng = np.random.default_rng(1)


def mma(c, a, b):
    """c[lane][4] += A(16x16) B(16x8) from per-lane regs (each reg = 2 values)."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for l in range(32):
        g, t = l >> 2, l & 3
        for e in range(2):
            A[g, 2 * t + e] = a[l][0][e]
            A[g + 8, 2 * t + e] = a[l][1][e]
            A[g, 2 * t + 8 + e] = a[l][2][e]
            A[g + 8, 2 * t + 8 + e] = a[l][3][e]
            B[2 * t + e, g] = b[l][0][e]
            B[2 * t + 8 + e, g] = b[l][1][e]
    C = A @ B
    for l in range(32):
        g, t = l >> 2, l & 3
        c[l][0] += C[g, 2 * t]
        c[l][1] += C[g, 2 * t + 1]
        c[l][2] += C[g + 8, 2 * t]
        c[l][3] += C[g + 8, 2 * t + 1]


def lds32(sm, off):
    assert off % 2 == 0, "32-bit load misaligned"
    return (sm[off], sm[off + 1])


def ldsm_x4(sm, addr, trans):
    """addr[lane] = f16 offset of the row this lane addresses."""
    for l in range(32):
        assert addr[l] % 8 == 0, "ldmatrix row address not 16-byte aligned"
    out = [[None] * 4 for _ in range(32)]
    for m in range(4):
        mat = np.array([[sm[addr[8 * m + r] + c] for c in range(8)] for r in range(8)])
        for l in range(32):
            if trans:
                out[l][m] = (mat[2 * (l % 4), l // 4], mat[2 * (l % 4) + 1, l // 4])
            else:
                out[l][m] = (mat[l // 4, 2 * (l % 4)], mat[l // 4, 2 * (l % 4) + 1])
    return out


def check_attention(MT, hd):
    HPB, TR = 16 * MT, 64 // MT
    NT = 8 * MT
    hds = hd + 8
    Q = rng.standard_normal((HPB, hd))
    K = rng.standard_normal((TR, hd))
    P = rng.random((HPB, TR))
    # layout as in the kernel (one array of f16 slots; values kept exact in float64)
    qh = 0
    kt = 2 * HPB * hds
    ph = kt + TR * hds + 2 * HPB * (TR + 4)  # ss is f32 [HPB][TR+4] = 2 slots per float
    size = ph + 2 * HPB * (TR + 8)
    sm = np.zeros(size)
    for h in range(HPB):
        sm[qh + h * hds: qh + h * hds + hd] = Q[h]
        sm[ph + h * (TR + 8): ph + h * (TR + 8) + TR] = P[h]
    for r in range(TR):
        sm[kt + r * hds: kt + r * hds + hd] = K[r]
    S = np.zeros((HPB, TR))
    O = np.zeros((HPB, hd))
    for warp in range(8):
        # S phase
        smt, snt = warp % MT, warp // MT
        c = [[0.0] * 4 for _ in range(32)]
        for k in range(0, hd, 16):
            a = [[None] * 4 for _ in range(32)]
            b = [[None] * 2 for _ in range(32)]
            for l in range(32):
                g, t4 = l >> 2, l & 3
                qa = qh + (smt * 16 + g) * hds + 2 * t4
                kb = kt + (snt * 8 + g) * hds + 2 * t4
                a[l] = [lds32(sm, qa + k), lds32(sm, qa + 8 * hds + k), lds32(sm, qa + k + 8),
                        lds32(sm, qa + 8 * hds + k + 8)]
                b[l] = [lds32(sm, kb + k), lds32(sm, kb + k + 8)]
            mma(c, a, b)
        for l in range(32):
            g, t4 = l >> 2, l & 3
            row = snt * 8 + 2 * t4
            S[smt * 16 + g, row] = c[l][0]
            S[smt * 16 + g, row + 1] = c[l][1]
            S[smt * 16 + g + 8, row] = c[l][2]
            S[smt * 16 + g + 8, row + 1] = c[l][3]
        # O phase
        omt, odw = warp % MT, hd * MT // 8
        od0, ont = (warp // MT) * odw, odw // 8
        o = [[[0.0] * 4 for _ in range(32)] for _ in range(NT)]
        for ks in range(TR // 16):
            a = [[None] * 4 for _ in range(32)]
            for l in range(32):
                g, t4 = l >> 2, l & 3
                pa = ph + (omt * 16 + g) * (TR + 8) + 2 * t4
                a[l] = [lds32(sm, pa + 16 * ks), lds32(sm, pa + 8 * (TR + 8) + 16 * ks),
                        lds32(sm, pa + 16 * ks + 8), lds32(sm, pa + 8 * (TR + 8) + 16 * ks + 8)]
            for jj in range(NT // 2):
                if 2 * jj >= ont:
                    continue
                addr = [kt + ((l & 7) + ((l >> 3) & 1) * 8) * hds + od0 + (l >> 4) * 8 + 16 * ks * hds + 16 * jj
                        for l in range(32)]
                bb = ldsm_x4(sm, addr, True)
                mma(o[2 * jj], a, [[bb[l][0], bb[l][1]] for l in range(32)])
                mma(o[2 * jj + 1], a, [[bb[l][2], bb[l][3]] for l in range(32)])
        for j in range(ont):
            for l in range(32):
                g, t4 = l >> 2, l & 3
                d = od0 + 8 * j + 2 * t4
                O[omt * 16 + g, d] = o[j][l][0]
                O[omt * 16 + g, d + 1] = o[j][l][1]
                O[omt * 16 + g + 8, d] = o[j][l][2]
                O[omt * 16 + g + 8, d + 1] = o[j][l][3]
    assert np.allclose(S, Q @ K.T), f"S wrong MT={MT} hd={hd}"
    assert np.allclose(O, P @ K), f"O wrong MT={MT} hd={hd}"
    print(f"attention MT={MT} hd={hd}: S and O fragments match Q.K^T and P.K")


def check_gemm(SPAN):
    G_BM, G_BN, G_SA, G_KS = 64, 128, 72, 4
    A = rng.standard_normal((G_BM, 64))
    Bt = rng.standard_normal((G_BN, 64))  # [n][k]
    sa = np.zeros(G_BM * G_SA)
    sb = np.zeros(G_BN * G_SA)
    for r in range(G_BM):
        sa[r * G_SA: r * G_SA + 64] = A[r]
    for n in range(G_BN):
        sb[n * G_SA: n * G_SA + 64] = Bt[n]
    for warp in range(8):
        wm, wnb = warp & 3, (warp >> 2) * 64
        for span in range(G_KS // SPAN):
            for q in range(SPAN):
                ks16 = (span * SPAN + q) * 16
                addr = [(wm * 16 + (l & 15)) * G_SA + ks16 + (l >> 4) * 8 for l in range(32)]
                al = ldsm_x4(sa, addr, False)
                for l in range(32):
                    g, t4 = l >> 2, l & 3
                    r0, kc = wm * 16 + g, ks16 + 2 * t4
                    ref = [lds32(sa, r0 * G_SA + kc), lds32(sa, (r0 + 8) * G_SA + kc),
                           lds32(sa, r0 * G_SA + kc + 8), lds32(sa, (r0 + 8) * G_SA + kc + 8)]
                    assert all(tuple(al[l][i]) == tuple(ref[i]) for i in range(4)), "A frag"
            for nt in range(0, 8, 2):
                for q in range(SPAN):
                    ks16 = (span * SPAN + q) * 16
                    addr = [(wnb + nt * 8 + (l & 7) + ((l >> 4) << 3)) * G_SA + ks16 + ((l >> 3) & 1) * 8
                            for l in range(32)]
                    bf = ldsm_x4(sb, addr, False)
                    for ntt in (nt, nt + 1):
                        for l in range(32):
                            g, t4 = l >> 2, l & 3
                            nb, kc = wnb + ntt * 8 + g, ks16 + 2 * t4
                            ref = [lds32(sb, nb * G_SA + kc), lds32(sb, nb * G_SA + kc + 8)]
                            got = [bf[l][2 * (ntt & 1)], bf[l][2 * (ntt & 1) + 1]]
                            assert all(tuple(got[i]) == tuple(ref[i]) for i in range(2)), "B frag"
    print(f"gemm LDSM SPAN={SPAN}: ldmatrix registers equal the 32-bit-load registers")


for MT in (1, 2):
    for hd in (128, 256, 512):
        check_attention(MT, hd)
check_gemm(1)
check_gemm(2)
