//! Q8_K (spec/model.md §5.5): activation-only, 256 values, an f32 scale, 256 × i8 and the sixteen
//! 16-value partial sums the K-quant dots use for their min terms. Never stored in a GGUF.

use ds4_gguf::TensorType;

/// `f32 d`, `i8 qs[256]`, `i16 bsums[16]` with `bsums[j] = Σ_{i<16} qs[16j+i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == TensorType::Q8K.block_bytes());

impl BlockQ8K {
    /// spec/model.md §3.2 P3b. `max` is the **first** element of largest magnitude and keeps its
    /// sign, so `d` may be negative; `q = clamp(rint(−127/max · x), −128, 127)`, rint ties to even.
    pub fn quantize(x: &[f32]) -> BlockQ8K {
        assert_eq!(x.len(), 256, "a Q8_K block holds 256 values");
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            // Strictly greater: the first element at the largest magnitude wins.
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut blk = BlockQ8K {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        };
        if amax == 0.0 {
            return blk;
        }
        let iscale = -127.0 / max;
        for (q, &v) in blk.qs.iter_mut().zip(x) {
            *q = (iscale * v).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
        for (j, s) in blk.bsums.iter_mut().enumerate() {
            *s = blk.qs[16 * j..16 * j + 16].iter().map(|&q| q as i16).sum();
        }
        blk.d = 1.0 / iscale;
        blk
    }

    /// `d · qs[i]` for each element.
    pub fn dequantize(&self, out: &mut [f32]) {
        for (o, &q) in out[..256].iter_mut().zip(&self.qs) {
            *o = self.d * q as f32;
        }
    }
}
