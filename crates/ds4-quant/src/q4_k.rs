//! Q4_K (spec/model.md §5.3): 256 weights as 8 sub-blocks of 32; a 4-bit quant per weight, 6-bit
//! scale and 6-bit min per sub-block packed into 12 bytes, f16 super-scales `d` and `dmin`.
//! 144 bytes per 256 weights = 4.5 bits per weight.

use crate::{Block, BlockQ8K};
use ds4_gguf::TensorType;
use half::f16;

/// `d`, `dmin`, `scales[12]` (eight 6-bit scales and mins), `qs[128]`: byte `32c + l` holds
/// element `64c + l` in its low nibble and `64c + 32 + l` in its high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}
const _: () = assert!(size_of::<BlockQ4K>() == TensorType::Q4K.block_bytes());

/// The 6-bit `(scale, min)` of sub-block `j` (0..8) from the packed 12 bytes (spec/model.md §5.3).
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

impl BlockQ4K {
    /// The 4-bit quant of element `e` (0..256).
    #[inline]
    pub fn q(&self, e: usize) -> u8 {
        let j = e / 32;
        (self.qs[32 * (j / 2) + e % 32] >> (4 * (j % 2))) & 15
    }
}

impl Block for BlockQ4K {
    const TYPE: TensorType = TensorType::Q4K;
    type Act = BlockQ8K;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        let dmin = self.dmin.to_f32();
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &self.scales);
            let dl = d * sc as f32;
            let ml = dmin * m as f32;
            for e in 32 * j..32 * j + 32 {
                out[e] = dl * self.q(e) as f32 - ml;
            }
        }
    }

    /// spec/model.md §5.3: `(d_y·d)·Σ_j sc_j·(Σ q·q_y) − (d_y·dmin)·Σ_j m_j·(bsums[2j]+bsums[2j+1])`.
    fn dot(&self, y: &BlockQ8K) -> f32 {
        let mut isum = 0i32;
        let mut summs = 0i32;
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &self.scales);
            let mut sumq = 0i32;
            for e in 32 * j..32 * j + 32 {
                sumq += self.q(e) as i32 * y.qs[e] as i32;
            }
            isum += sc as i32 * sumq;
            summs += m as i32 * (y.bsums[2 * j] as i32 + y.bsums[2 * j + 1] as i32);
        }
        (y.d * self.d.to_f32()) * isum as f32 - (y.d * self.dmin.to_f32()) * summs as f32
    }

    fn quantize_ref(x: &[f32]) -> Self {
        crate::quantize::q4_k(x)
    }
}
