//! `kernels/blocks.cuh` is generated from ds4-quant (STYLE §2.4: CUDA does not retype the block
//! layouts or the IQ2_XXS grid). [`render_blocks_cuh`] produces it; a test fails on any difference
//! and `DS4_UPDATE_GENERATED=1` rewrites the file.

use ds4_gguf::TensorType;

/// The text of `kernels/blocks.cuh`.
pub fn render_blocks_cuh() -> String {
    let mut s = String::from(HEADER);
    for (ty, name) in [
        (TensorType::Q8_0, "block_q8_0"),
        (TensorType::Q2K, "block_q2_k"),
        (TensorType::Q4K, "block_q4_k"),
        (TensorType::Iq2Xxs, "block_iq2_xxs"),
    ] {
        s = s.replace(
            &format!("sizeof({name}) == BYTES"),
            &format!("sizeof({name}) == {}", ty.block_bytes()),
        );
    }
    s.push_str("__device__ __constant__ uint64_t IQ2XXS_GRID[256] = {\n");
    for row in ds4_quant::IQ2XXS_GRID.chunks(4) {
        let vals: Vec<String> = row.iter().map(|v| format!("0x{v:016x}ull")).collect();
        s.push_str(&format!("    {},\n", vals.join(", ")));
    }
    s.push_str("};\n");
    s
}

const HEADER: &str = r#"// GENERATED from ds4-quant (IQ2XXS_GRID, block layouts) by `ds4_cuda::blocks::render_blocks_cuh`;
// do not edit. `DS4_UPDATE_GENERATED=1 cargo test -p ds4-cuda blocks_cuh` rewrites it.
// CUDA does not retype the layouts (STYLE §2.4): the sizes below are checked against ds4-gguf.
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

// Q8_0 (spec/model.md §5.1): element i = d * qs[i]. 34 bytes per 32 weights, 8.5 bits/weight.
struct block_q8_0 { __half d; int8_t qs[32]; };
static_assert(sizeof(block_q8_0) == BYTES, "Q8_0 block");

// Q2_K (§5.2): 16 sub-blocks of 16; 4-bit scale and min per sub-block, 2-bit quants in 4 planes.
// 84 bytes per 256 weights, 2.625 bits/weight.
struct block_q2_k { uint8_t scales[16]; uint8_t qs[64]; __half d; __half dmin; };
static_assert(sizeof(block_q2_k) == BYTES, "Q2_K block");

// Q4_K (§5.3): 8 sub-blocks of 32; 6-bit scales and mins packed in 12 bytes, 4-bit quants.
// 144 bytes per 256 weights, 4.5 bits/weight.
struct block_q4_k { __half d; __half dmin; uint8_t scales[12]; uint8_t qs[128]; };
static_assert(sizeof(block_q4_k) == BYTES, "Q4_K block");

// IQ2_XXS (§5.4): 8 sub-blocks of 32; four grid indices + four 7-bit sign codes + 4-bit scale.
// 66 bytes per 256 weights, 2.0625 bits/weight.
struct block_iq2_xxs { __half d; uint16_t qs[32]; };
static_assert(sizeof(block_iq2_xxs) == BYTES, "IQ2_XXS block");

// ggml's iq2xxs_grid: byte k of entry g is the magnitude (8, 25 or 43) of lane k.
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cuh_is_generated_from_ds4_quant() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/blocks.cuh");
        let want = render_blocks_cuh();
        if std::env::var("DS4_UPDATE_GENERATED").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &want).expect("writing kernels/blocks.cuh");
        }
        let have = std::fs::read_to_string(&path).expect("reading kernels/blocks.cuh");
        assert!(
            have == want,
            "kernels/blocks.cuh differs from ds4-quant; rerun with DS4_UPDATE_GENERATED=1"
        );
    }
}
