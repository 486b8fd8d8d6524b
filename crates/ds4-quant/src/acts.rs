//! Activations quantized once per matvec (spec/model.md §3.2 P3a / P3b), so every row's dot is an
//! integer block dot. The buffers are reused across calls: no allocation per token once sized.

use crate::{ActQ8_0, BlockQ8K, TensorType};

/// Which int8 activation format a weight format dots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActFormat {
    /// Blocks of 32, f32 scale (P3a): for Q8_0 weights.
    Q8_0,
    /// Blocks of 256, f32 scale and 16-value sums (P3b): for Q2_K, Q4_K and IQ2_XXS weights.
    Q8K,
}

impl ActFormat {
    /// The activation format for weights of type `ty`, or `None` when `ty` is only ever used with
    /// f32 activations (F32, F16, BF16).
    pub const fn for_weights(ty: TensorType) -> Option<ActFormat> {
        match ty {
            TensorType::Q8_0 => Some(ActFormat::Q8_0),
            TensorType::Q2K | TensorType::Q4K | TensorType::Iq2Xxs => Some(ActFormat::Q8K),
            _ => None,
        }
    }

    /// Elements per activation block.
    pub const fn block_elems(self) -> usize {
        match self {
            ActFormat::Q8_0 => 32,
            ActFormat::Q8K => 256,
        }
    }
}

/// An activation vector quantized to [`ActFormat`] blocks.
#[derive(Debug, Clone)]
pub struct QuantizedActs {
    format: ActFormat,
    n_elems: usize,
    q8_0: Vec<ActQ8_0>,
    /// The Q8_0 scales again, contiguous, so SIMD kernels load eight with one instruction.
    q8_0_d: Vec<f32>,
    /// The Q8_0 quants again, contiguous (32 per block), so two blocks are one 64-byte load.
    q8_0_qs: Vec<i8>,
    /// `Σ qs` of each Q8_0 block: the correction term of the VNNI kernels, which dot unsigned
    /// `w + 128` with the signed activations.
    q8_0_sum: Vec<i32>,
    q8k: Vec<BlockQ8K>,
    /// The Q8_K quants again, contiguous and 64-byte aligned: a `BlockQ8K` is 292 bytes with
    /// its quants at offset 4, so 64-byte loads from the blocks themselves always split cache
    /// lines, which the AVX-512 kernels measured to cost (BENCHMARKS.md, ds4-quant).
    q8k_qs: Vec<Align64>,
}

/// 64 activation quants on a cache line of their own.
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C, align(64))]
pub(crate) struct Align64(pub [i8; 64]);

impl QuantizedActs {
    /// Quantizes `x` into the activation format that weights of type `ty` dot with.
    ///
    /// # Panics
    /// If `ty` has no quantized-activation path or `x.len()` is not a multiple of the block size.
    pub fn quantize(ty: TensorType, x: &[f32]) -> QuantizedActs {
        let mut a = QuantizedActs::empty(ty);
        a.requantize(ty, x);
        a
    }

    /// An empty buffer for weights of type `ty`; fill it with [`QuantizedActs::requantize`].
    pub fn empty(ty: TensorType) -> QuantizedActs {
        let format = ActFormat::for_weights(ty)
            .unwrap_or_else(|| panic!("{ty} weights take f32 activations, not quantized ones"));
        QuantizedActs {
            format,
            n_elems: 0,
            q8_0: Vec::new(),
            q8_0_d: Vec::new(),
            q8_0_qs: Vec::new(),
            q8_0_sum: Vec::new(),
            q8k: Vec::new(),
            q8k_qs: Vec::new(),
        }
    }

    /// Re-quantizes `x` in place for weights of type `ty`, reusing the buffers (allocates only
    /// when `x` is longer than any vector quantized before).
    pub fn requantize(&mut self, ty: TensorType, x: &[f32]) {
        let format = ActFormat::for_weights(ty)
            .unwrap_or_else(|| panic!("{ty} weights take f32 activations, not quantized ones"));
        let be = format.block_elems();
        assert!(
            x.len().is_multiple_of(be),
            "{} activations are not whole {be}-value blocks",
            x.len()
        );
        self.format = format;
        self.n_elems = x.len();
        match format {
            ActFormat::Q8_0 => {
                self.q8_0.clear();
                self.q8_0.extend(x.chunks_exact(32).map(ActQ8_0::quantize));
                self.q8_0_d.clear();
                self.q8_0_d.extend(self.q8_0.iter().map(|b| b.d));
                self.q8_0_qs.clear();
                self.q8_0_qs.extend(self.q8_0.iter().flat_map(|b| b.qs));
                self.q8_0_sum.clear();
                self.q8_0_sum.extend(
                    self.q8_0
                        .iter()
                        .map(|b| b.qs.iter().map(|&q| q as i32).sum::<i32>()),
                );
            }
            ActFormat::Q8K => {
                self.q8k.clear();
                self.q8k.extend(x.chunks_exact(256).map(BlockQ8K::quantize));
                self.q8k_qs.clear();
                self.q8k_qs.extend(self.q8k.iter().flat_map(|b| {
                    let q = &b.qs;
                    std::array::from_fn::<Align64, 4, _>(|i| {
                        Align64(std::array::from_fn(|j| q[64 * i + j]))
                    })
                }));
            }
        }
    }

    /// The format the activations are in.
    pub fn format(&self) -> ActFormat {
        self.format
    }

    /// Number of activations.
    pub fn n_elems(&self) -> usize {
        self.n_elems
    }

    /// The Q8_0 blocks (empty unless `format() == ActFormat::Q8_0`).
    pub fn q8_0_blocks(&self) -> &[ActQ8_0] {
        match self.format {
            ActFormat::Q8_0 => &self.q8_0,
            ActFormat::Q8K => &[],
        }
    }

    /// The Q8_0 block scales (`q8_0_blocks()[b].d`), contiguous.
    pub fn q8_0_scales(&self) -> &[f32] {
        match self.format {
            ActFormat::Q8_0 => &self.q8_0_d,
            ActFormat::Q8K => &[],
        }
    }

    /// The Q8_0 quants of all blocks, contiguous (empty unless the format is Q8_0).
    pub(crate) fn q8_0_qs(&self) -> &[i8] {
        match self.format {
            ActFormat::Q8_0 => &self.q8_0_qs,
            ActFormat::Q8K => &[],
        }
    }

    /// `Σ qs` per Q8_0 block (empty unless the format is Q8_0).
    pub(crate) fn q8_0_sums(&self) -> &[i32] {
        match self.format {
            ActFormat::Q8_0 => &self.q8_0_sum,
            ActFormat::Q8K => &[],
        }
    }

    /// The Q8_K blocks (empty unless `format() == ActFormat::Q8K`).
    pub fn q8k_blocks(&self) -> &[BlockQ8K] {
        match self.format {
            ActFormat::Q8K => &self.q8k,
            ActFormat::Q8_0 => &[],
        }
    }

    /// The Q8_K quants of all blocks, contiguous, 64-byte aligned (empty unless the format is
    /// Q8_K).
    pub(crate) fn q8k_qs(&self) -> &[i8] {
        match self.format {
            ActFormat::Q8K => bytemuck::cast_slice(&self.q8k_qs),
            ActFormat::Q8_0 => &[],
        }
    }

    /// Asserts these activations can dot with a `ty` row of `row_bytes` bytes.
    pub(crate) fn check_for(&self, ty: TensorType, row_bytes: usize) {
        assert_eq!(
            ActFormat::for_weights(ty),
            Some(self.format),
            "{ty} weights need {:?} activations, these are {:?}",
            ActFormat::for_weights(ty),
            self.format
        );
        let want = ty.row_bytes(self.n_elems as u64);
        assert_eq!(
            want,
            Some(row_bytes as u64),
            "{ty} row of {row_bytes} bytes does not hold {} activations",
            self.n_elems
        );
    }
}
