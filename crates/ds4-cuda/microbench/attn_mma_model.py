#!/usr/bin/env python3
"""Lane-level model of kernels/prefill.cu `attention_mma_body`, checked against a float64 attention.

No GPU here, so this replays the kernel thread by thread and lane by lane: the same shared-memory
byte layout (one flat buffer, the kernel's offsets and strides), the documented fragment layouts
of mma.sync m16n8k16 (row.col, f16 in, f32 accumulate) and ldmatrix .x4 .trans, and the kernel's
index arithmetic for every phase (Q split, K tile, S, online softmax, O update, output staging).
A wrong fragment index, stride or region overlap shows up as a large error; the float rounding of
the model (mma products summed in float64) is not the GPU's, so the bound is loose (1e-5).

    python3 crates/ds4-cuda/microbench/attn_mma_model.py        # a few seconds per case
"""
import sys

import numpy as np


def f16(x):
    return np.asarray(x, dtype=np.float32).astype(np.float16)


class Smem:
    """The dynamic shared memory as one byte buffer with typed views at the kernel's offsets."""

    def __init__(self, hpb, tr, hd):
        hds = hd + 8
        self.hds = hds
        off = 0
        self.layout = {}

        def region(name, count, dtype):
            nonlocal off
            size = count * np.dtype(dtype).itemsize
            assert off % 16 == 0, f"{name} at {off} not 16-byte aligned"
            self.layout[name] = (off, count, dtype)
            off += size

        region("qh", hpb * hds, np.float16)
        region("ql", hpb * hds, np.float16)
        region("kt", tr * hds, np.float16)
        region("ss", hpb * (tr + 4), np.float32)
        region("ph", hpb * (tr + 8), np.float16)
        region("pl", hpb * (tr + 8), np.float16)
        self.size = off
        # Poison: any read of a byte never written is NaN-like garbage.
        self.buf = np.full(off, 0x7E, dtype=np.uint8)

    def view(self, name):
        o, n, dt = self.layout[name]
        return self.buf[o : o + n * np.dtype(dt).itemsize].view(dt)

    def view_at(self, byte_off, count, dtype):
        return self.buf[byte_off : byte_off + count * np.dtype(dtype).itemsize].view(dtype)


def lds32(arr, idx):
    """pf_lds32: two consecutive halves at half index idx (must be 4-byte aligned)."""
    assert idx % 2 == 0, "misaligned 32-bit shared load"
    return (arr[idx], arr[idx + 1])


def mma16816(c, a, b0, b1):
    """c[lane][4] += A·B with A from a[lane][4] (pairs), B from b0/b1[lane] (pairs)."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for lane in range(32):
        g, t4 = lane >> 2, lane & 3
        (x0, x1), (y0, y1), (z0, z1), (w0, w1) = a[lane]
        A[g, 2 * t4], A[g, 2 * t4 + 1] = x0, x1
        A[g + 8, 2 * t4], A[g + 8, 2 * t4 + 1] = y0, y1
        A[g, 2 * t4 + 8], A[g, 2 * t4 + 9] = z0, z1
        A[g + 8, 2 * t4 + 8], A[g + 8, 2 * t4 + 9] = w0, w1
        B[2 * t4, g], B[2 * t4 + 1, g] = b0[lane]
        B[2 * t4 + 8, g], B[2 * t4 + 9, g] = b1[lane]
    C = A @ B
    for lane in range(32):
        g, t4 = lane >> 2, lane & 3
        c[lane][0] += C[g, 2 * t4]
        c[lane][1] += C[g, 2 * t4 + 1]
        c[lane][2] += C[g + 8, 2 * t4]
        c[lane][3] += C[g + 8, 2 * t4 + 1]


def ldsm_x4_trans(arr, addr):
    """ldmatrix.m8n8.x4.trans.b16: addr[lane] = half index of row (lane & 7) of matrix lane >> 3."""
    regs = [[None] * 4 for _ in range(32)]
    for i in range(4):
        rows = [addr[8 * i + r] for r in range(8)]
        for a in rows:
            assert a % 8 == 0, "ldmatrix row address not 16-byte aligned"
        M = np.array([[arr[a + col] for col in range(8)] for a in rows])
        for lane in range(32):
            regs[lane][i] = (M[2 * (lane % 4), lane // 4], M[2 * (lane % 4) + 1, lane // 4])
    return regs


def rope_theta(base, n_rot, p, k):
    return p * base ** (-2.0 * k / n_rot)


def kernel(MT, blk_x, t, a):
    """One block (blockIdx.x = blk_x, blockIdx.y = t) of attention_mma_body<MT>; writes a['out']."""
    HPB, TR, TPH, NT = 16 * MT, 64 // MT, 256 // (16 * MT), 8 * MT
    hd, n_head = a["head_dim"], a["n_head"]
    sm = Smem(HPB, TR, hd)
    hds = sm.hds
    qh, ql, kt, ss, ph, pl = (sm.view(n) for n in ("qh", "ql", "kt", "ss", "ph", "pl"))
    h0 = blk_x * HPB
    pos0 = a["pos0"]
    pos = pos0 + t
    n_raw = min(pos + 1, a["n_swa"])
    n_comp, use_list = 0, False
    if a["ratio"] > 0:
        n_comp = (pos + 1) // a["ratio"]
        if a["ratio"] == 4 and n_comp > a["top_k"]:
            n_comp, use_list = a["top_k"], True
    n_rows = n_raw + n_comp
    lt = a["list"][t * a["top_k"] :]

    def row_ptr(j):
        if j < n_raw:
            p = pos - n_raw + 1 + j
            return ("kvc", (p - pos0) * hd) if p >= pos0 else ("ring", (p % a["raw_cap"]) * hd)
        return ("comp", (lt[j - n_raw] if use_list else j - n_raw) * hd)

    c4 = hd // 4
    qt = a["q"][(t * n_head + h0) * hd :]
    for tid in range(256):
        for i in range(tid, HPB * c4, 256):
            h, c = i // c4, i % c4
            v = qt[4 * i : 4 * i + 4].astype(np.float32)
            hi = f16(v)
            lo = f16(v - hi.astype(np.float32))
            qh[h * hds + 4 * c : h * hds + 4 * c + 4] = hi
            ql[h * hds + 4 * c : h * hds + 4 * c + 4] = lo
    rp = [None] * TR
    for tid in range(TR):
        rp[tid] = row_ptr(tid) if tid < n_rows else None

    m_run = [a["sinks"][h0 + tid // TPH] for tid in range(256)]
    l_run = [1.0] * 256
    odw = hd * MT // 8
    ont = odw // 8
    o = [[[[0.0] * 4 for _ in range(32)] for _ in range(NT)] for _ in range(8)]  # [warp][j][lane][4]
    alpha_s = [None] * HPB

    n_tiles = (n_rows + TR - 1) // TR
    for tile in range(n_tiles):
        r0 = tile * TR
        # K tile
        for tid in range(256):
            for base in range(0, TR * c4, 256 * 8):
                for u in range(8):
                    i = base + u * 256 + tid
                    if i >= TR * c4:
                        continue
                    r, c = i // c4, i % c4
                    src = rp[r]
                    if src is None:
                        v = np.zeros(4, np.float32)
                    else:
                        arr, off = src
                        v = a[arr][off + 4 * c : off + 4 * c + 4]
                    kt[r * hds + 4 * c : r * hds + 4 * c + 4] = f16(v)
        # S
        for warp in range(8):
            smt, snt = warp % MT, warp // MT
            c0 = [[0.0] * 4 for _ in range(32)]
            c1 = [[0.0] * 4 for _ in range(32)]
            for k in range(0, hd, 32):
                for e in range(2):
                    kk = k + 16 * e
                    ah, al, b0, b1 = [], [], [], []
                    for lane in range(32):
                        g, t4 = lane >> 2, lane & 3
                        qa = (smt * 16 + g) * hds + 2 * t4
                        kb = (snt * 8 + g) * hds + 2 * t4
                        ah.append([lds32(qh, qa + kk), lds32(qh, qa + 8 * hds + kk),
                                   lds32(qh, qa + kk + 8), lds32(qh, qa + 8 * hds + kk + 8)])
                        al.append([lds32(ql, qa + kk), lds32(ql, qa + 8 * hds + kk),
                                   lds32(ql, qa + kk + 8), lds32(ql, qa + 8 * hds + kk + 8)])
                        b0.append(lds32(kt, kb + kk))
                        b1.append(lds32(kt, kb + kk + 8))
                    c = c1 if e else c0
                    mma16816(c, ah, b0, b1)
                    mma16816(c, al, b0, b1)
            for lane in range(32):
                g, t4 = lane >> 2, lane & 3
                row = snt * 8 + 2 * t4
                v0, v1 = r0 + row < n_rows, r0 + row + 1 < n_rows
                s0 = (smt * 16 + g) * (TR + 4) + row
                s1 = s0 + 8 * (TR + 4)
                kq = a["kq_scale"]
                ss[s0] = (c0[lane][0] + c1[lane][0]) * kq if v0 else -3.0e38
                ss[s0 + 1] = (c0[lane][1] + c1[lane][1]) * kq if v1 else -3.0e38
                ss[s1] = (c0[lane][2] + c1[lane][2]) * kq if v0 else -3.0e38
                ss[s1 + 1] = (c0[lane][3] + c1[lane][3]) * kq if v1 else -3.0e38
        # softmax
        stats = []
        for tid in range(256):
            sh, ssub = tid // TPH, tid % TPH
            s4 = ss[sh * (TR + 4) + 4 * ssub : sh * (TR + 4) + 4 * ssub + 4].astype(np.float64)
            stats.append((sh, ssub, s4))
        for tid in range(256):
            sh, ssub, _ = stats[tid]
            group = [stats[x][2] for x in range(tid - ssub, tid - ssub + TPH)]
            mx = max(float(np.max(s)) for s in group)
            m_new = max(m_run[tid], mx)
            al_ = np.exp(m_run[tid] - m_new)
            p = np.exp(stats[tid][2] - m_new)
            ps = sum(float(np.sum(np.exp(s - m_new))) for s in group)
            l_run[tid] = l_run[tid] * al_ + ps
            m_run[tid] = m_new
            if ssub == 0:
                alpha_s[sh] = al_
            hi = f16(p)
            lo = f16(p - hi.astype(np.float64))
            ph[sh * (TR + 8) + 4 * ssub : sh * (TR + 8) + 4 * ssub + 4] = hi
            pl[sh * (TR + 8) + 4 * ssub : sh * (TR + 8) + 4 * ssub + 4] = lo
        # O update, next row addresses
        for tid in range(TR):
            j = r0 + TR + tid
            rp[tid] = row_ptr(j) if j < n_rows else None
        for warp in range(8):
            omt, od0 = warp % MT, (warp // MT) * odw
            for lane in range(32):
                g = lane >> 2
                a0, a1 = alpha_s[omt * 16 + g], alpha_s[omt * 16 + g + 8]
                for j in range(NT):
                    o[warp][j][lane][0] *= a0
                    o[warp][j][lane][1] *= a0
                    o[warp][j][lane][2] *= a1
                    o[warp][j][lane][3] *= a1
            for ks in range(TR // 16):
                ah, al = [], []
                for lane in range(32):
                    g, t4 = lane >> 2, lane & 3
                    pa = (omt * 16 + g) * (TR + 8) + 2 * t4
                    ah.append([lds32(ph, pa + 16 * ks), lds32(ph, pa + 8 * (TR + 8) + 16 * ks),
                               lds32(ph, pa + 16 * ks + 8), lds32(ph, pa + 8 * (TR + 8) + 16 * ks + 8)])
                    al.append([lds32(pl, pa + 16 * ks), lds32(pl, pa + 8 * (TR + 8) + 16 * ks),
                               lds32(pl, pa + 16 * ks + 8), lds32(pl, pa + 8 * (TR + 8) + 16 * ks + 8)])
                for jj in range(NT // 2):
                    if 2 * jj < ont:
                        addr = []
                        for lane in range(32):
                            vb = ((lane & 7) + ((lane >> 3) & 1) * 8) * hds + od0 + (lane >> 4) * 8
                            addr.append(vb + 16 * ks * hds + 16 * jj)
                        b = ldsm_x4_trans(kt, addr)
                        for which, (i0, i1) in ((2 * jj, (0, 1)), (2 * jj + 1, (2, 3))):
                            bb0 = [b[lane][i0] for lane in range(32)]
                            bb1 = [b[lane][i1] for lane in range(32)]
                            mma16816(o[warp][which], ah, bb0, bb1)
                            mma16816(o[warp][which], al, bb0, bb1)
    linv_s = [None] * HPB
    for tid in range(256):
        if tid % TPH == 0:
            linv_s[tid // TPH] = 1.0 / l_run[tid]
    of = sm.view_at(0, HPB * hd, np.float32)
    for warp in range(8):
        omt, od0 = warp % MT, (warp // MT) * odw
        for lane in range(32):
            g, t4 = lane >> 2, lane & 3
            i0, i1 = linv_s[omt * 16 + g], linv_s[omt * 16 + g + 8]
            o0 = (omt * 16 + g) * hd + od0 + 2 * t4
            o1 = o0 + 8 * hd
            for j in range(NT):
                if j < ont:
                    of[o0 + 8 * j] = o[warp][j][lane][0] * i0
                    of[o0 + 8 * j + 1] = o[warp][j][lane][1] * i0
                    of[o1 + 8 * j] = o[warp][j][lane][2] * i1
                    of[o1 + 8 * j + 1] = o[warp][j][lane][3] * i1
    n_pair, rbase = a["n_rot"] // 2, hd - a["n_rot"]
    for i in range(HPB * n_pair):
        h, kk = i // n_pair, i % n_pair
        th = rope_theta(10000.0, a["n_rot"], float(pos), kk)
        s, c = -np.sin(th), np.cos(th)
        v0, v1 = of[h * hd + rbase + 2 * kk], of[h * hd + rbase + 2 * kk + 1]
        of[h * hd + rbase + 2 * kk] = v0 * c - v1 * s
        of[h * hd + rbase + 2 * kk + 1] = v0 * s + v1 * c
    a["out"][(t * n_head + h0) * hd : (t * n_head + h0 + HPB) * hd] = of
    return sm.size


def reference(a):
    hd, nh, pos0 = a["head_dim"], a["n_head"], a["pos0"]
    out = np.zeros((a["t"], nh, hd))
    for i in range(a["t"]):
        pos = pos0 + i
        n_raw = min(pos + 1, a["n_swa"])
        rows = []
        for j in range(n_raw):
            p = pos + 1 - n_raw + j
            rows.append(a["kvc"][(p - pos0) * hd :][:hd] if p >= pos0 else a["ring"][(p % a["raw_cap"]) * hd :][:hd])
        if a["ratio"]:
            vis = (pos + 1) // a["ratio"]
            sel = a["list"][i * a["top_k"] :][: a["top_k"]] if a["ratio"] == 4 and vis > a["top_k"] else range(vis)
            rows += [a["comp"][c * hd :][:hd] for c in sel]
        K = np.array(rows, dtype=np.float64)
        for h in range(nh):
            q = a["q"][(i * nh + h) * hd :][:hd].astype(np.float64)
            s = K @ q * a["kq_scale"]
            sink = a["sinks"][h]
            mx = max(sink, s.max())
            e = np.exp(s - mx)
            o = e @ K / (np.exp(sink - mx) + e.sum())
            n_pair, rb = a["n_rot"] // 2, hd - a["n_rot"]
            for kk in range(n_pair):
                th = rope_theta(10000.0, a["n_rot"], float(pos), kk)
                sn, c = -np.sin(th), np.cos(th)
                x0, x1 = o[rb + 2 * kk], o[rb + 2 * kk + 1]
                o[rb + 2 * kk], o[rb + 2 * kk + 1] = x0 * c - x1 * sn, x0 * sn + x1 * c
            out[i, h] = o
    return out.reshape(-1)


def case(n_head, hd, n_swa, pos0, t, ratio, top_k, n_rot, seed, tokens=None):
    rng = np.random.default_rng(seed)
    top_k = max(top_k, 1)
    ncm = (pos0 + t) // ratio + 1 if ratio else 1
    exact = lambda n: rng.uniform(-1, 1, n).astype(np.float16).astype(np.float32)
    lst = np.zeros(t * top_k, np.int64)
    for i in range(t):
        vis = (pos0 + i + 1) // ratio if ratio else 0
        if vis > top_k:
            lst[i * top_k : (i + 1) * top_k] = rng.permutation(vis)[:top_k]
    a = dict(n_head=n_head, head_dim=hd, n_swa=n_swa, raw_cap=n_swa, pos0=pos0, t=t, ratio=ratio, top_k=top_k,
             q=rng.uniform(-3, 3, t * n_head * hd).astype(np.float32), ring=exact(n_swa * hd), kvc=exact(t * hd),
             comp=exact(ncm * hd), list=lst, sinks=rng.uniform(-2, 2, n_head).astype(np.float32),
             kq_scale=np.float32(1.0 / np.sqrt(hd)), n_rot=n_rot, out=np.full(t * n_head * hd, np.nan))
    MT = 2 if n_head % 32 == 0 else 1
    want = reference(a)
    smem = 0
    for tt in tokens if tokens is not None else range(t):
        for bx in range(n_head // (16 * MT)):
            smem = kernel(MT, bx, tt, a)
    sel = np.concatenate([np.arange((tt * n_head) * hd, (tt + 1) * n_head * hd) for tt in (tokens if tokens is not None else range(t))])
    got, ref = a["out"][sel], want[sel]
    assert not np.isnan(got).any(), "output left unwritten"
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    print(f"heads {n_head} hd {hd} MT {MT} swa {n_swa} pos0 {pos0} t {t} ratio {ratio} top_k {top_k} n_rot {n_rot}: "
          f"smem {smem} B, relL2 {rel:.2e}")
    assert rel < 1e-5, rel
    return smem


if __name__ == "__main__":
    # Shared-memory size as attn_mma_smem (prefill.rs) computes it, at the real shape.
    assert Smem(32, 32, 512).size == 109568 and Smem(16, 64, 512).size == 108800
    case(16, 128, 40, 90, 6, 4, 16, 64, seed=1, tokens=[0, 3, 5])        # MT=1, list rows, 2 tiles
    case(32, 128, 40, 90, 4, 128, 0, 64, seed=2)                         # MT=2, partial tile
    case(32, 128, 24, 0, 3, 0, 0, 0, seed=3)                             # window only, pos 0..2
    case(32, 256, 64, 300, 2, 4, 64, 64, seed=4)                         # MT=2, 4 tiles, hd 256
    case(16, 256, 64, 300, 2, 4, 200, 32, seed=5)                        # all compressed rows (no list)
    print("ok")
    sys.exit(0)
