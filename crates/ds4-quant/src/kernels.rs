//! The kernel table: one function pointer per (format, operation), filled once at startup with
//! the best implementation the CPU supports (STYLE §2.4). Every entry has a scalar twin in
//! `scalar.rs`; tests run each available table against the scalar one.

use crate::{
    check_row, plain, scalar, BlockIq2Xxs, BlockQ2K, BlockQ4K, BlockQ8K, BlockQ8_0, QuantizedActs,
    TensorType,
};
use std::sync::LazyLock;

/// `Σ w·x` of a row (whole blocks) with f32 activations.
pub type DotF32 = unsafe fn(&[u8], &[f32]) -> f32;
/// Integer dot of a row with Q8_0 activations (blocks, and their scales contiguous).
pub type DotQ8_0 = unsafe fn(&[u8], &QuantizedActs) -> f32;
/// Integer dot of a row with Q8_K activations.
pub type DotQ8K = unsafe fn(&[u8], &QuantizedActs) -> f32;
/// Q8_0 matrix (`n_rows` rows of `row_bytes`) times Q8_0 activations into `out[..n_rows]`.
pub type MatvecQ8_0 = unsafe fn(&[u8], usize, usize, &QuantizedActs, &mut [f32]);
/// Dequantize a row (whole blocks) into f32.
pub type Dequant = unsafe fn(&[u8], &mut [f32]);

/// One implementation level's kernels. Calling an entry is safe for any table obtained from this
/// module's constructors (they return a table only when the CPU has its features), provided the
/// slice lengths match — the crate's public functions assert that before calling.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// `"scalar"`, `"avx2"` or `"avx512"`.
    pub name: &'static str,
    pub f16_f32: DotF32,
    pub bf16_f32: DotF32,
    pub q8_0_f32: DotF32,
    pub q2_k_f32: DotF32,
    pub q4_k_f32: DotF32,
    pub iq2_xxs_f32: DotF32,
    pub q8_0_q: DotQ8_0,
    pub q8_0_matvec_q: MatvecQ8_0,
    pub q2_k_q: DotQ8K,
    pub q4_k_q: DotQ8K,
    pub iq2_xxs_q: DotQ8K,
    pub f16_dequant: Dequant,
    pub q8_0_dequant: Dequant,
    pub q2_k_dequant: Dequant,
    pub q4_k_dequant: Dequant,
    pub iq2_xxs_dequant: Dequant,
}

impl Kernels {
    /// The portable scalar reference (always available).
    pub fn scalar() -> Kernels {
        Kernels {
            name: "scalar",
            f16_f32: |r, x| plain::dot_f16_f32(r, x),
            bf16_f32: |r, x| plain::dot_bf16_f32(r, x),
            q8_0_f32: |r, x| scalar::dot_f32_blocks::<BlockQ8_0>(r, x),
            q2_k_f32: |r, x| scalar::dot_f32_blocks::<BlockQ2K>(r, x),
            q4_k_f32: |r, x| scalar::dot_f32_blocks::<BlockQ4K>(r, x),
            iq2_xxs_f32: |r, x| scalar::dot_f32_blocks::<BlockIq2Xxs>(r, x),
            q8_0_q: |r, a| scalar::dot_q_blocks::<BlockQ8_0>(r, a.q8_0_blocks()),
            q8_0_matvec_q: |w, rb, n, a, out| {
                for (row, o) in w.chunks_exact(rb).take(n).zip(out) {
                    *o = scalar::dot_q_blocks::<BlockQ8_0>(row, a.q8_0_blocks());
                }
            },
            q2_k_q: |r, a| scalar::dot_q_blocks::<BlockQ2K>(r, a.q8k_blocks()),
            q4_k_q: |r, a| scalar::dot_q_blocks::<BlockQ4K>(r, a.q8k_blocks()),
            iq2_xxs_q: |r, a| scalar::dot_q_blocks::<BlockIq2Xxs>(r, a.q8k_blocks()),
            f16_dequant: |s, d| plain::dequantize_f16(s, d),
            q8_0_dequant: |s, d| scalar::dequantize_blocks::<BlockQ8_0>(s, d),
            q2_k_dequant: |s, d| scalar::dequantize_blocks::<BlockQ2K>(s, d),
            q4_k_dequant: |s, d| scalar::dequantize_blocks::<BlockQ4K>(s, d),
            iq2_xxs_dequant: |s, d| scalar::dequantize_blocks::<BlockIq2Xxs>(s, d),
        }
    }

    /// AVX2 + FMA + F16C kernels, if this CPU has them.
    pub fn avx2() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            use crate::x86::avx2 as k;
            return Some(Kernels {
                name: "avx2",
                f16_f32: k::dot_f32_f16,
                bf16_f32: k::dot_f32_bf16,
                q8_0_f32: k::dot_f32_q8_0,
                q2_k_f32: k::dot_f32_q2_k,
                q4_k_f32: k::dot_f32_q4_k,
                iq2_xxs_f32: k::dot_f32_iq2_xxs,
                // SAFETY (both): this table exists only on a CPU with the kernels' features; the
                // caller's contract covers the lengths.
                q8_0_q: |r, a| unsafe { k::dot_q_q8_0(r, a.q8_0_blocks(), a.q8_0_scales()) },
                q8_0_matvec_q: |w, rb, n, a, out| unsafe {
                    k::matvec_q_q8_0(w, rb, n, a.q8_0_blocks(), a.q8_0_scales(), out)
                },
                q2_k_q: |r, a| unsafe { k::dot_q_q2_k(r, a.q8k_blocks()) },
                q4_k_q: |r, a| unsafe { k::dot_q_q4_k(r, a.q8k_blocks()) },
                iq2_xxs_q: |r, a| unsafe { k::dot_q_iq2_xxs(r, a.q8k_blocks()) },
                ..Kernels::scalar()
            });
        }
        None
    }

    /// AVX-512 (F, BW, VL, VNNI) kernels on top of the AVX2 ones, if this CPU has them.
    pub fn avx512() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        if crate::x86::avx512::supported() {
            let base = Kernels::avx2()?;
            return Some(crate::x86::avx512::kernels(base));
        }
        None
    }

    /// The AVX-512 table as a CPU without VBMI / BITALG (Skylake-X, Cascade Lake) gets it, if
    /// this CPU has AVX-512 with VBMI (where it is otherwise the same as [`Kernels::avx512`]),
    /// so tests and benchmarks cover those kernels too.
    pub fn avx512_without_vbmi() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        if crate::x86::avx512::supported_vbmi() {
            let base = Kernels::avx2()?;
            return Some(Kernels {
                name: "avx512-novbmi",
                ..crate::x86::avx512::kernels_without_vbmi(base)
            });
        }
        None
    }

    /// Every table this CPU can run, scalar first and [`Kernels::best`] last (for tests and
    /// benchmarks).
    pub fn available() -> Vec<Kernels> {
        [
            Some(Kernels::scalar()),
            Kernels::avx2(),
            Kernels::avx512_without_vbmi(),
            Kernels::avx512(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The fastest table this CPU supports, chosen once per process.
    pub fn best() -> &'static Kernels {
        static BEST: LazyLock<Kernels> = LazyLock::new(|| {
            Kernels::avx512()
                .or_else(Kernels::avx2)
                .unwrap_or_else(Kernels::scalar)
        });
        &BEST
    }
}

impl Kernels {
    /// [`crate::dot_f32`] with this table's kernels.
    ///
    /// # Panics
    /// As [`crate::dot_f32`].
    pub fn dot_f32(&self, ty: TensorType, row: &[u8], x: &[f32]) -> f32 {
        check_row(ty, row.len(), x.len());
        let f = match ty {
            TensorType::F32 => return plain::dot_f32_f32(row, x),
            TensorType::F16 => self.f16_f32,
            TensorType::Bf16 => self.bf16_f32,
            TensorType::Q8_0 => self.q8_0_f32,
            TensorType::Q2K => self.q2_k_f32,
            TensorType::Q4K => self.q4_k_f32,
            TensorType::Iq2Xxs => self.iq2_xxs_f32,
            TensorType::Q8K | TensorType::I32 => panic!("{ty} is not a weight format"),
        };
        // SAFETY: this table was built only for a CPU with its features; check_row asserted that
        // row holds exactly x.len() elements of ty in whole blocks.
        unsafe { f(row, x) }
    }

    /// [`crate::dot_q`] with this table's kernels.
    ///
    /// # Panics
    /// As [`crate::dot_q`].
    pub fn dot_q(&self, ty: TensorType, row: &[u8], acts: &QuantizedActs) -> f32 {
        acts.check_for(ty, row.len());
        // SAFETY (all arms): the table matches the CPU; check_for asserted the activation format
        // and that row holds exactly as many whole blocks as the activations.
        unsafe {
            match ty {
                TensorType::Q8_0 => (self.q8_0_q)(row, acts),
                TensorType::Q2K => (self.q2_k_q)(row, acts),
                TensorType::Q4K => (self.q4_k_q)(row, acts),
                TensorType::Iq2Xxs => (self.iq2_xxs_q)(row, acts),
                _ => unreachable!("check_for accepts only formats with an activation format"),
            }
        }
    }

    /// [`crate::matvec_q`] with this table's kernels (rows interleaved where a kernel is bound by
    /// one row's serial sum); each `y[o]` equals `self.dot_q(ty, row o, acts)` exactly.
    ///
    /// # Panics
    /// As [`crate::matvec_q`].
    pub fn matvec_q(
        &self,
        ty: TensorType,
        w: &[u8],
        row_bytes: usize,
        n_rows: usize,
        acts: &QuantizedActs,
        y: &mut [f32],
    ) {
        acts.check_for(ty, row_bytes);
        crate::check_matvec(ty, w.len(), row_bytes, n_rows, acts.n_elems(), y.len());
        if ty == TensorType::Q8_0 {
            // SAFETY: the table matches the CPU; the asserts above checked w, y and the activations.
            unsafe { (self.q8_0_matvec_q)(w, row_bytes, n_rows, acts, y) };
            return;
        }
        let f = match ty {
            TensorType::Q2K => self.q2_k_q,
            TensorType::Q4K => self.q4_k_q,
            TensorType::Iq2Xxs => self.iq2_xxs_q,
            _ => unreachable!("check_for accepts only formats with an activation format"),
        };
        if row_bytes == 0 {
            y.fill(0.0); // empty rows: the empty sum
            return;
        }
        for (row, yo) in w.chunks_exact(row_bytes).zip(y.iter_mut()) {
            // SAFETY: the table matches the CPU; check_for asserted that a row of row_bytes holds
            // exactly as many whole blocks as the activations (checked once for all rows).
            *yo = unsafe { f(row, acts) };
        }
    }

    /// [`crate::matvec_f32`] with this table's kernels.
    ///
    /// # Panics
    /// As [`crate::matvec_f32`].
    pub fn matvec_f32(
        &self,
        ty: TensorType,
        w: &[u8],
        row_bytes: usize,
        n_rows: usize,
        x: &[f32],
        y: &mut [f32],
    ) {
        crate::check_matvec(ty, w.len(), row_bytes, n_rows, x.len(), y.len());
        for (o, yo) in y.iter_mut().enumerate() {
            *yo = self.dot_f32(ty, &w[o * row_bytes..(o + 1) * row_bytes], x);
        }
    }

    /// [`crate::dequantize_row`] with this table's kernels.
    ///
    /// # Panics
    /// As [`crate::dequantize_row`].
    pub fn dequantize(&self, ty: TensorType, src: &[u8], dst: &mut [f32]) {
        check_row(ty, src.len(), dst.len());
        let f = match ty {
            TensorType::F32 => return plain::dequantize_f32(src, dst),
            TensorType::Bf16 => return plain::dequantize_bf16(src, dst),
            TensorType::Q8K => {
                for (c, o) in src
                    .chunks_exact(ty.block_bytes())
                    .zip(dst.chunks_exact_mut(256))
                {
                    bytemuck::pod_read_unaligned::<BlockQ8K>(c).dequantize(o);
                }
                return;
            }
            TensorType::F16 => self.f16_dequant,
            TensorType::Q8_0 => self.q8_0_dequant,
            TensorType::Q2K => self.q2_k_dequant,
            TensorType::Q4K => self.q4_k_dequant,
            TensorType::Iq2Xxs => self.iq2_xxs_dequant,
            TensorType::I32 => panic!("I32 tensors are ids, not weights: nothing to dequantize"),
        };
        // SAFETY: the table matches the CPU; check_row asserted the lengths.
        unsafe { f(src, dst) }
    }
}
