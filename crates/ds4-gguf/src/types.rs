//! The tensor type table (ggml's `type_traits`): block size and bytes per block for every type the
//! engine reads. Quant crates pin their `#[repr(C)]` block sizes to this table at compile time.

/// A ggml tensor type. Discriminants are the GGUF type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TensorType {
    F32 = 0,
    F16 = 1,
    Q8_0 = 8,
    Q2K = 10,
    Q4K = 12,
    /// Activation-only format; never stored in a GGUF the engine reads, listed for sizing.
    Q8K = 15,
    Iq2Xxs = 16,
    I32 = 26,
    Bf16 = 30,
}

impl TensorType {
    /// Every type this table knows, in code order.
    pub const ALL: [TensorType; 9] = [
        TensorType::F32,
        TensorType::F16,
        TensorType::Q8_0,
        TensorType::Q2K,
        TensorType::Q4K,
        TensorType::Q8K,
        TensorType::Iq2Xxs,
        TensorType::I32,
        TensorType::Bf16,
    ];

    /// The type for a GGUF type code, or `None` for codes this engine does not read.
    pub const fn from_code(code: u32) -> Option<TensorType> {
        Some(match code {
            0 => TensorType::F32,
            1 => TensorType::F16,
            8 => TensorType::Q8_0,
            10 => TensorType::Q2K,
            12 => TensorType::Q4K,
            15 => TensorType::Q8K,
            16 => TensorType::Iq2Xxs,
            26 => TensorType::I32,
            30 => TensorType::Bf16,
            _ => return None,
        })
    }

    /// The GGUF type code.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// ggml's name for the type (as `gguf` and llama.cpp print it).
    pub const fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Q8_0 => "Q8_0",
            TensorType::Q2K => "Q2_K",
            TensorType::Q4K => "Q4_K",
            TensorType::Q8K => "Q8_K",
            TensorType::Iq2Xxs => "IQ2_XXS",
            TensorType::I32 => "I32",
            TensorType::Bf16 => "BF16",
        }
    }

    /// Elements per block (1 for plain types).
    pub const fn block_elems(self) -> usize {
        match self {
            TensorType::F32 | TensorType::F16 | TensorType::I32 | TensorType::Bf16 => 1,
            TensorType::Q8_0 => 32,
            TensorType::Q2K | TensorType::Q4K | TensorType::Q8K | TensorType::Iq2Xxs => 256,
        }
    }

    /// Bytes per block (spec/model.md §5).
    pub const fn block_bytes(self) -> usize {
        match self {
            TensorType::F32 | TensorType::I32 => 4,
            TensorType::F16 | TensorType::Bf16 => 2,
            TensorType::Q8_0 => 34,
            TensorType::Q2K => 84,
            TensorType::Q4K => 144,
            TensorType::Q8K => 292,
            TensorType::Iq2Xxs => 66,
        }
    }

    /// Whether the type is block-quantized (a row length must be a multiple of `block_elems`).
    pub const fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// Bytes of a row of `n_elems` elements, or `None` if `n_elems` is not a whole number of blocks
    /// or the size overflows.
    pub const fn row_bytes(self, n_elems: u64) -> Option<u64> {
        let be = self.block_elems() as u64;
        if !n_elems.is_multiple_of(be) {
            return None;
        }
        (n_elems / be).checked_mul(self.block_bytes() as u64)
    }
}

impl std::fmt::Display for TensorType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for t in TensorType::ALL {
            assert_eq!(TensorType::from_code(t.code()), Some(t));
        }
        assert_eq!(TensorType::from_code(2), None);
    }

    #[test]
    fn row_bytes_requires_whole_blocks() {
        assert_eq!(TensorType::Q8_0.row_bytes(4096), Some(128 * 34));
        assert_eq!(TensorType::Iq2Xxs.row_bytes(4096), Some(16 * 66));
        assert_eq!(TensorType::Q2K.row_bytes(100), None);
        assert_eq!(TensorType::F16.row_bytes(3), Some(6));
    }
}
