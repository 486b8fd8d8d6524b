//! Q8_0 (spec/model.md §5.1): 32 weights, one f16 scale, 32 × i8. 34 bytes per 32 weights =
//! 8.5 bits per weight. Also the activation side of ds4's Q8_0 matvec (§3.2 P3a), which keeps its
//! scale in f32: [`ActQ8_0`].

use crate::Block;
use ds4_gguf::TensorType;
use half::f16;

/// `[f16 d][i8 qs[32]]`; element `i = d · qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8_0>() == TensorType::Q8_0.block_bytes());

/// 32 activations quantized per spec/model.md §3.2 P3a: i8 values and an **f32** scale (ds4 does
/// not round it to f16, unlike ggml's own Q8_0 activations).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActQ8_0 {
    pub d: f32,
    pub qs: [i8; 32],
}

impl ActQ8_0 {
    /// spec/model.md §3.2 P3a: `d = amax/127`, `q = clamp(rint(x·(1/d)), −128, 127)`, rint ties
    /// to even.
    pub fn quantize(x: &[f32]) -> ActQ8_0 {
        assert_eq!(x.len(), 32, "a Q8_0 activation block holds 32 values");
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
        ActQ8_0 { d, qs }
    }
}

impl Block for BlockQ8_0 {
    const TYPE: TensorType = TensorType::Q8_0;
    type Act = ActQ8_0;

    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (o, &q) in out[..32].iter_mut().zip(&self.qs) {
            *o = q as f32 * d;
        }
    }

    /// spec/model.md §3.2 P2: `(d_w · s_x) · (f32) Σ q_w·q_x`, the integer sum exact.
    fn dot(&self, y: &ActQ8_0) -> f32 {
        let isum: i32 = self
            .qs
            .iter()
            .zip(&y.qs)
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum();
        (self.d.to_f32() * y.d) * isum as f32
    }

    /// ggml's `quantize_row_q8_0_ref`: `d = amax/127` stored as f16, `q = roundf(x/d)` (ties away
    /// from zero).
    fn quantize_ref(x: &[f32]) -> Self {
        assert_eq!(x.len(), 32, "a Q8_0 block holds 32 values");
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0i8; 32];
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
        BlockQ8_0 {
            d: f16::from_f32(d),
            qs,
        }
    }
}
