//! Q2_K (spec/model.md §5.2): 256 weights as 16 sub-blocks of 16; a 2-bit quant per weight, a 4-bit
//! scale and 4-bit min per sub-block, f16 super-scales `d` and `dmin`. 84 bytes per 256 weights =
//! 2.625 bits per weight.

use crate::{Block, BlockQ8K};
use ds4_gguf::TensorType;
use half::f16;

/// `scales[16]` (low nibble scale, high nibble min), `qs[64]` (four 2-bit planes per 32 bytes),
/// `d`, `dmin`. Element `e`: `q = (qs[32·(e/128) + e%32] >> 2·((e%128)/32)) & 3`,
/// `value = d·(s&15)·q − dmin·(s>>4)` with `s = scales[e/16]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: f16,
    pub dmin: f16,
}
const _: () = assert!(size_of::<BlockQ2K>() == TensorType::Q2K.block_bytes());

impl BlockQ2K {
    /// The 2-bit quant of element `e` (0..256).
    #[inline]
    pub fn q(&self, e: usize) -> u8 {
        (self.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3
    }
}

impl Block for BlockQ2K {
    const TYPE: TensorType = TensorType::Q2K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        let dmin = self.dmin.to_f32();
        for (sub, &s) in self.scales.iter().enumerate() {
            // ggml's order: dl = d·sc and ml = dmin·m rounded first, then dl·q − ml.
            let dl = d * (s & 15) as f32;
            let ml = dmin * (s >> 4) as f32;
            for e in 16 * sub..16 * sub + 16 {
                out[e] = dl * self.q(e) as f32 - ml;
            }
        }
    }

    /// spec/model.md §5.2: `(d_y·d)·isum − (d_y·dmin)·summs`, both sums exact integers.
    fn dot(&self, y: &BlockQ8K) -> f32 {
        let mut isum = 0i32;
        let mut summs = 0i32;
        for (sub, &s) in self.scales.iter().enumerate() {
            let mut sumq = 0i32;
            for e in 16 * sub..16 * sub + 16 {
                sumq += self.q(e) as i32 * y.qs[e] as i32;
            }
            isum += (s & 15) as i32 * sumq;
            summs += (s >> 4) as i32 * y.bsums[sub] as i32;
        }
        (y.d * self.d.to_f32()) * isum as f32 - (y.d * self.dmin.to_f32()) * summs as f32
    }

    fn quantize_ref(x: &[f32]) -> Self {
        crate::quantize::q2_k(x)
    }
}
