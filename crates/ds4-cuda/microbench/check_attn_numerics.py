#!/usr/bin/env python3
"""Reviewer check: block-level numpy model of attention_mma_body numerics (Q, P split hi+lo f16, K f16-exact,
f32 accumulation per 16-wide k step, online softmax from the sink, -3e38 masked tail rows) vs the
float64 reference of tests/prefill.rs, on the test case shapes: expected errors vs the 1e-5 / 1e-4 gates."""
import numpy as np
rng=np.random.default_rng(5)
def f16(x): return x.astype(np.float16).astype(np.float32)
def split(x):
    x=x.astype(np.float32); h=f16(x); l=f16(x-h); return h,l
def kernel(Q,Ks,sink,kq,TR):
    HPB,hd=Q.shape; n=Ks.shape[0]
    qh,ql=split(Q)
    m=sink.astype(np.float32).copy(); l=np.ones(HPB,np.float32); O=np.zeros((HPB,hd),np.float32)
    for r0 in range(0,n,TR):
        K=np.zeros((TR,hd),np.float32); nr=min(TR,n-r0); K[:nr]=Ks[r0:r0+nr]
        # mma: exact products, f32 accumulate per 16-k step (approx)
        S=np.zeros((HPB,TR),np.float32)
        for k in range(0,hd,16):
            S=(S+(qh[:,k:k+16].astype(np.float64)@K[:,k:k+16].T.astype(np.float64)).astype(np.float32)).astype(np.float32)
            S=(S+(ql[:,k:k+16].astype(np.float64)@K[:,k:k+16].T.astype(np.float64)).astype(np.float32)).astype(np.float32)
        S=(S*np.float32(kq)).astype(np.float32); S[:,nr:]=-3e38
        mx=S.max(1); mn=np.maximum(m,mx); a=np.exp(m-mn).astype(np.float32)
        P=np.exp((S-mn[:,None]).astype(np.float32)).astype(np.float32)
        l=(l*a+P.sum(1)).astype(np.float32); m=mn
        ph,pl=split(P)
        O=(O*a[:,None]).astype(np.float32)
        for k in range(0,TR,16):
            O=(O+(ph[:,k:k+16].astype(np.float64)@K[k:k+16].astype(np.float64)).astype(np.float32))
            O=(O+(pl[:,k:k+16].astype(np.float64)@K[k:k+16].astype(np.float64)).astype(np.float32))
    return O*(1/l)[:,None]
def ref(Q,Ks,sink,kq):
    S=Q.astype(np.float64)@Ks.T.astype(np.float64)*kq
    mx=np.maximum(S.max(1),sink); e=np.exp(S-mx[:,None]); den=np.exp(sink-mx)+e.sum(1)
    return (e@Ks.astype(np.float64))/den[:,None]
for (HPB,hd,n,TR) in [(32,512,128+23,32),(16,512,128+16,64),(32,256,640,32),(16,128,40,64),(32,512,198,32)]:
    worst=(0,0)
    for trial in range(5):
        Q=rng.uniform(-3,3,(HPB,hd)).astype(np.float32)
        Ks=f16(rng.uniform(-1,1,(n,hd)))
        sink=rng.uniform(-2,2,HPB).astype(np.float32)
        kq=np.float32(1/np.sqrt(hd))
        o=kernel(Q,Ks,sink,kq,TR); w=ref(Q,Ks,sink,kq.astype(np.float64))
        d=o-w; rel=np.sqrt((d*d).sum()/(w*w).sum()); mxe=np.abs(d).max()/np.abs(w).max()
        worst=(max(worst[0],rel),max(worst[1],mxe))
    print(HPB,hd,n,TR,"relL2 %.2e max %.2e"%worst)
