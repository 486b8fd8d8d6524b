# Model (no GPU): replays, lane by lane, the summation orders that commits 0c0ca7f and
# 32607fa changed, to see whether the new kernels give the same bits as b737bc0.
#  1. hc_fused mixer shares: old = serial sum over the 32 block shares (warp 0, lane per row);
#     new = lane t holds share t, then warp_sum (xor butterfly 16, 8, 4, 2, 1).
#  2. q head RMS scale: old head_norm_rope ran 128 threads, attn_prep's q_head_block runs 256
#     (block_rms_scale: per-thread strided f64 partials, warp xor tree, then warp totals).
#  3. route_select / digit search with NaN, -inf and fewer finite candidates than n_used.
# Run: python3 crates/ds4-cuda/microbench/sums_order_model.py
import numpy as np, random, math
f32 = np.float32
rng = np.random.default_rng(1)

def xor_tree(vals, add):
    v = list(vals)
    o = 16
    while o:
        v = [add(v[l], v[l ^ o]) for l in range(32)]
        o >>= 1
    return v[0]

# 1. mixer shares
diff = 0
N = 20000
for _ in range(N):
    parts = (rng.standard_normal(32) * rng.choice([1e-3, 1.0, 30.0], 32)).astype(f32)
    old = f32(0)
    for t in range(32):
        old = f32(old + parts[t])
    new = xor_tree([f32(f32(0) + parts[l]) for l in range(32)], lambda a, b: f32(a + b))
    diff += old.view(np.uint32) != new.view(np.uint32)
    # proposed fix: lane t loads share t, then m += shfl(v, j) for j = 0..31 (block order)
    fix = f32(0)
    for j in range(32):
        fix = f32(fix + parts[j])
    assert fix.view(np.uint32) == old.view(np.uint32)
print(f"hc mixer share sum: new tree != old serial in {diff}/{N} random rows; shuffle-serial fix == old in all")

# 2. q-head RMS with 128 vs 256 threads
def block_rms(x, nthreads, eps=f32(1e-6), stride=None):
    stride = stride or nthreads
    part = [0.0] * nthreads
    for t in range(min(nthreads, stride)):
        s = 0.0
        for i in range(t, len(x), stride):
            s += float(x[i]) * float(x[i])
        part[t] = s
    nw = nthreads // 32
    warp = [xor_tree(part[32 * w:32 * w + 32], lambda a, b: a + b) for w in range(nw)]
    tot = xor_tree([warp[l] if l < nw else 0.0 for l in range(32)], lambda a, b: a + b)
    mean = f32(tot / len(x))
    return f32(1.0) / f32(math.sqrt(f32(mean + eps))), tot
dd = dm = 0
N = 3000
for _ in range(N):
    x = (rng.standard_normal(512) * np.exp(rng.standard_normal(512) * 2)).astype(f32)
    a, ta = block_rms(x, 128)
    b, tb = block_rms(x, 256)
    dd += ta != tb
    dm += a != b
    c, tc = block_rms(x, 256, stride=128)  # proposed fix: only threads < 128 sum, stride 128
    assert tc == ta and c == a
print(f"q head rms: f64 sums differ in {dd}/{N} heads, the f32 scale in {dm}/{N}; stride-128 fix == old in all")

# 3. route picks with NaN/-inf/too few candidates: old block argmax vs new warp lanes
def old_pick(sc, n_used):
    chosen = []
    for k in range(n_used):
        best = -3e38; bi = 2**31 - 1
        for e in range(len(sc)):
            if e in chosen: continue
            if sc[e] > best or (sc[e] == best and e < bi): best = sc[e]; bi = e
        chosen.append(bi)
    return chosen
def new_pick(sc, n_used):
    n = len(sc); taken = [0] * 32; best = [None] * 32
    def rescan(l):
        b = -3e38; bi = 2**31 - 1; j = 0; e = l
        while e < n:
            if not (taken[l] >> j) & 1 and (sc[e] > b or (sc[e] == b and e < bi)): b = sc[e]; bi = e
            e += 32; j += 1
        best[l] = (b, bi)
    for l in range(32): rescan(l)
    chosen = []
    for k in range(n_used):
        vals = list(best); o = 16
        while o:
            nv = []
            for l in range(32):
                wb, wi = vals[l]; ob, oi = vals[l ^ o]
                if ob > wb or (ob == wb and oi < wi): wb, wi = ob, oi
                nv.append((wb, wi))
            vals = nv; o //= 2
        assert all(v == vals[0] for v in vals)
        wi = vals[0][1]; chosen.append(wi)
        if 0 <= wi < n:
            l = wi & 31; taken[l] |= 1 << (wi >> 5); rescan(l)
    return chosen
for _ in range(3000):
    n = random.choice([8, 16, 33, 256, 1024])
    sc = [random.choice([random.random(), 0.5, -0.0, 0.0, float('nan'), -math.inf, -3e38, -3.2e38])
          for _ in range(n)]
    assert old_pick(sc, min(6, n)) == new_pick(sc, min(6, n)), sc
print("route picks with NaN/-inf/-0/too few candidates: same as old")
