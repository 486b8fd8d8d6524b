# Model of gemv.cu dense_tma (no GPU): the producer thread, the 8 consumer warps, the
# full/empty mbarriers (count, tx-count, phase parity), the bulk copies completing at random times,
# the stage byte layout (quants + Q8_0 scales, SwiGLU halves), gated matrices, partial last tiles,
# grouped inputs, and the L2 prefetch piece split. Random interleavings; every output checked
# against a float64 reference, every bulk copy checked against in-flight readers of its stage.
# Run: python3 crates/ds4-cuda/microbench/dense_tma_pipeline_model.py
import random
import numpy as np

TMA_TILE, STAGES, CW = 16384, 6, 8
TMA_STAGE = TMA_TILE + TMA_TILE // 16
Q8, F16 = 8, 1


class Mbar:
    def __init__(s, count):
        s.count, s.pending, s.tx, s.phase = count, count, 0, 0

    def _check(s):
        assert s.pending >= 0
        if s.pending == 0 and s.tx == 0:
            s.phase += 1
            s.pending = s.count

    def arrive(s):
        s.pending -= 1
        s._check()

    def expect_tx_arrive(s, b):
        s.tx += b
        s.pending -= 1
        s._check()

    def complete_tx(s, b):
        s.tx -= b
        assert s.tx >= 0, "complete_tx beyond expect_tx"
        s._check()

    def try_wait_parity(s, p):
        return (s.phase & 1) != p


def tile_rows(n_in, m):
    row_bytes = n_in if m["ty"] == Q8 else 2 * n_in
    parts = 2 if m["swiglu"] else 1
    return TMA_TILE // row_bytes // parts


def geom(m, n_in):
    rb = n_in if m["ty"] == Q8 else 2 * n_in
    parts = 2 if m["swiglu"] else 1
    return dict(row_bytes=rb, parts=parts, tr=TMA_TILE // rb // parts, cpr=rb // 512)


def make_matrix(ty, rows, n_in, rng):
    if ty == Q8:
        q = rng.integers(-128, 128, size=(rows, n_in), dtype=np.int8)
        d = (rng.random((rows, n_in // 32)) * 0.01 + 0.001).astype(np.float16)
        raw = bytearray(q.tobytes())
        off = (rows * n_in + 255) // 256 * 256
        raw += bytes(off - len(raw))
        s_off = len(raw)
        raw += d.tobytes()
        deq = q.astype(np.float64) * np.repeat(d.astype(np.float64), 32, axis=1)
        return bytes(raw), s_off, deq
    w = (rng.standard_normal((rows, n_in)) * 0.05).astype(np.float16)
    return w.tobytes(), None, w.astype(np.float64)


def run(n_in, specs, groups, norm, grid, rng, sched_seed):
    mats = []
    block0 = 0
    x = rng.standard_normal(n_in * groups).astype(np.float32)
    norm_w = rng.standard_normal(n_in).astype(np.float32)
    for (ty, rows, swiglu, grouped, gated) in specs:
        w, s_off, deq = make_matrix(ty, rows, n_in, rng)
        m = dict(ty=ty, n_rows=rows, swiglu=swiglu, rpg=rows // groups if grouped else 0,
                 w=w, s_off=s_off, deq=deq, gate=0 if gated else 1, block0=block0)
        if swiglu:
            m["w2"], m["s2_off"], m["deq2"] = make_matrix(ty, rows, n_in, rng)
        mats.append(m)
        block0 += -(-rows // tile_rows(n_in, m))
    n_blocks = block0

    def tma_matrix(t):
        mi = 0
        for i in range(1, len(mats)):
            if t >= mats[i]["block0"]:
                mi = i
        return mats[mi]

    # float32 reference input as the kernel prepares it
    if norm:
        ss = float(np.sum(x[:n_in].astype(np.float64) ** 2))
        sc = np.float32(1.0 / np.sqrt(np.float32(ss / n_in) + np.float32(1e-6)))
    else:
        sc = np.float32(1)

    def xin(group):
        xg = x[group * n_in:(group + 1) * n_in]
        return ((xg * sc) * norm_w).astype(np.float64) if norm else xg.astype(np.float64)

    outs = [np.full(m["n_rows"], np.nan) for m in mats]
    clamp = 7.0
    srng = random.Random(sched_seed)
    for b in range(grid):
        stages = bytearray(STAGES * TMA_STAGE)
        full = [Mbar(1) for _ in range(STAGES)]
        empty = [Mbar(CW) for _ in range(STAGES)]
        readers = [0] * STAGES  # consumer warps that still must read the stage's current tile
        inflight = []  # (dst, bytes, stage)
        part = [[None] * 32, [None] * 32]
        bar = dict(count=0, gen=0)

        def producer():
            i = 0
            for t in range(b, n_blocks, grid):
                m = tma_matrix(t)
                if m["gate"] == 0:
                    continue
                g = geom(m, n_in)
                r0 = (t - m["block0"]) * g["tr"]
                nr = min(g["tr"], m["n_rows"] - r0)
                s = i % STAGES
                if i >= STAGES:
                    while not empty[s].try_wait_parity(((i // STAGES) - 1) & 1):
                        yield
                assert readers[s] == 0, "producer refills a stage before every warp released it"
                wbytes = nr * g["row_bytes"]
                sbytes = nr * n_in // 16 if m["ty"] == Q8 else 0
                full[s].expect_tx_arrive(g["parts"] * (wbytes + sbytes))
                st = s * TMA_STAGE
                for p in range(g["parts"]):
                    w = m["w2"] if p else m["w"]
                    soff = m["s2_off"] if p else m["s_off"]
                    src = r0 * g["row_bytes"]
                    dst = st + p * (TMA_TILE // 2)
                    assert dst % 16 == 0 and src % 16 == 0 and wbytes % 16 == 0
                    inflight.append((dst, w[src:src + wbytes], s))
                    if sbytes:
                        ssrc = soff + r0 * (n_in // 32) * 2
                        sdst = st + TMA_TILE + p * (TMA_TILE // 32)
                        assert ssrc % 16 == 0 and sdst % 16 == 0 and sbytes % 16 == 0
                        assert sdst + sbytes <= st + TMA_STAGE
                        assert dst + wbytes <= st + TMA_TILE
                        inflight.append((sdst, w[ssrc:ssrc + sbytes], s))
                readers[s] = CW
                i += 1
                yield

        def consumers_sync(gen_seen):
            bar["count"] += 1
            if bar["count"] == CW:
                bar["count"] = 0
                bar["gen"] += 1

        def consumer(warp):
            i = 0
            for t in range(b, n_blocks, grid):
                m = tma_matrix(t)
                if m["gate"] == 0:
                    continue
                g = geom(m, n_in)
                r0 = (t - m["block0"]) * g["tr"]
                nr = min(g["tr"], m["n_rows"] - r0)
                group = r0 // m["rpg"] if m["rpg"] > 0 else 0
                xg = xin(group)
                s = i % STAGES
                while not full[s].try_wait_parity((i // STAGES) & 1):
                    yield
                st = s * TMA_STAGE
                pt = part[i & 1]
                E = 16 if m["ty"] == Q8 else 8
                CH = 32 * E
                nb = n_in // 32
                vals = []
                for k in range(4):
                    u = warp + 8 * k
                    p = u // (g["tr"] * g["cpr"])
                    r = (u // g["cpr"]) % g["tr"]
                    c = u % g["cpr"]
                    ok = p < g["parts"] and r < nr
                    lane_sums = []
                    for lane in range(32):
                        if not ok:
                            lane_sums.append(0.0)
                            continue
                        off = st + p * (TMA_TILE // 2) * (g["parts"] - 1) + r * g["row_bytes"] + c * 512 + lane * 16
                        wb = bytes(stages[off:off + 16])
                        if m["ty"] == Q8:
                            q = np.frombuffer(wb, dtype=np.int8).astype(np.float64)
                            soff = st + TMA_TILE + p * (TMA_TILE // 32) * (g["parts"] - 1)
                            hi = r * nb + c * 16 + (lane >> 1)
                            d = np.frombuffer(bytes(stages[soff + 2 * hi:soff + 2 * hi + 2]), dtype=np.float16)[0]
                            xs = xg[c * CH + lane * E: c * CH + lane * E + E]
                            lane_sums.append(float(np.dot(q, xs)) * float(d))
                        else:
                            h = np.frombuffer(wb, dtype=np.float16).astype(np.float64)
                            xs = xg[c * CH + lane * E: c * CH + lane * E + E]
                            lane_sums.append(float(np.dot(h, xs)))
                    vals.append(sum(lane_sums))
                readers[s] -= 1
                empty[s].arrive()
                yield
                for k in range(4):
                    pt[warp + 8 * k] = vals[k]
                gen = bar["gen"]
                consumers_sync(gen)
                while bar["gen"] == gen:
                    yield
                if warp == 0:  # threads 0..nr-1 are warp 0
                    for r in range(nr):
                        o = r0 + r
                        v = sum(pt[r * g["cpr"] + c] for c in range(g["cpr"]))
                        if m["swiglu"]:
                            uu = sum(pt[(g["tr"] + r) * g["cpr"] + c] for c in range(g["cpr"]))
                            v = min(v, clamp)
                            uu = min(max(uu, -clamp), clamp)
                            outs[mats.index(m)][o] = v / (1 + np.exp(-v)) * uu
                        else:
                            outs[mats.index(m)][o] = v
                i += 1

        threads = [producer()] + [consumer(w) for w in range(CW)]
        alive = list(range(len(threads)))
        steps = 0
        while alive or inflight:
            steps += 1
            assert steps < 10_000_000, "hang"
            if inflight and (not alive or srng.random() < 0.3):
                k = srng.randrange(len(inflight))
                dst, data, s = inflight.pop(k)
                stages[dst:dst + len(data)] = data
                full[s].complete_tx(len(data))
                continue
            if not alive:
                continue
            # favour the producer so that it runs ahead of the consumers whenever it may
            ti = 0 if 0 in alive and srng.random() < 0.5 else srng.choice(alive)
            try:
                next(threads[ti])
            except StopIteration:
                alive.remove(ti)
            # deadlock detection: every live thread blocked and nothing in flight
        assert not inflight, "bulk copies outstanding when the block exits"

    for m, y in zip(mats, outs):
        if m["gate"] == 0:
            assert np.all(np.isnan(y))
            continue
        want = []
        for o in range(m["n_rows"]):
            grp = o // m["rpg"] if m["rpg"] > 0 else 0
            d = float(m["deq"][o] @ xin(grp))
            if m["swiglu"]:
                u = float(m["deq2"][o] @ xin(grp))
                d = min(d, clamp)
                u = min(max(u, -clamp), clamp)
                want.append(d / (1 + np.exp(-d)) * u)
            else:
                want.append(d)
        want = np.array(want)
        err = np.max(np.abs(y - want)) / max(1e-30, np.max(np.abs(want)))
        assert err < 1e-9, (n_in, m["ty"], m["swiglu"], err)


def prefetch_pieces(pf_bytes, grid):
    got = {}
    for b in range(grid):
        r, base, j = 0, 0, b
        while True:
            while r < 8 and j >= base + (pf_bytes[r] + TMA_TILE - 1) // TMA_TILE:
                base += (pf_bytes[r] + TMA_TILE - 1) // TMA_TILE
                r += 1
            if r == 8:
                break
            off = (j - base) * TMA_TILE
            n = min(TMA_TILE, pf_bytes[r] - off) & ~15
            if n:
                assert off % 16 == 0
                got.setdefault(r, []).append((off, n))
            j += grid
    for r, nbytes in enumerate(pf_bytes):
        pieces = sorted(got.get(r, []))
        covered = sum(n for _, n in pieces)
        assert covered == nbytes & ~15, (r, covered, nbytes)
        pos = 0
        for off, n in pieces:
            assert off == pos
            pos += n


if __name__ == "__main__":
    rng = np.random.default_rng(5)
    cases = [
        # n_in, [(ty, rows, swiglu, grouped, gated)], groups, norm, grid
        (512, [(Q8, 70, False, False, False), (Q8, 40, True, False, False)], 1, True, 3),
        (1024, [(Q8, 40, False, False, False), (F16, 20, False, False, True), (F16, 9, False, False, False)], 1, True, 2),
        (2048, [(Q8, 32, False, True, False)], 4, False, 3),
        (4096, [(Q8, 9, True, False, False), (F16, 5, False, False, False)], 1, True, 2),
        (8192, [(Q8, 5, False, False, False), (F16, 3, False, False, False), (Q8, 3, True, False, False)], 1, False, 2),
        (512, [(Q8, 33, False, False, True)], 1, False, 1),
        (1024, [(Q8, 2, False, False, False)], 1, False, 1),
        # many tiles per block: the ring wraps several times (empty-barrier parity)
        (512, [(Q8, 300, False, False, False), (F16, 9, False, False, True), (Q8, 200, True, False, False)], 1, True, 1),
        (4096, [(Q8, 32, False, True, False), (F16, 21, False, False, False)], 4, False, 2),
    ]
    for ci, (n_in, specs, groups, norm, grid) in enumerate(cases):
        for seed in range(3):
            run(n_in, specs, groups, norm, grid, rng, 1000 * ci + seed)
        print("case", ci, "ok")
    prng = random.Random(3)
    for _ in range(300):
        pf = [prng.choice([0, 16, 4096, 16384, 16400, 1 << 20, 7 * 16384 + 48, 100_000]) for _ in range(8)]
        prefetch_pieces(pf, prng.choice([1, 3, 132]))
    print("prefetch pieces ok")
