#!/usr/bin/env python3
"""Writes the seed corpus for the `gguf_parse` fuzz target with the `gguf` Python package
(an independent writer): small valid GGUF v3 files covering every metadata value type, nested arrays, a
custom alignment, and each tensor type the engine reads.

usage: python3 make_seeds.py OUT_DIR
"""
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)


def write(name, build, alignment=None):
    path = out / name
    w = gguf.GGUFWriter(str(path), "deepseek4")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    build(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def metadata_only(w):
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 4096)
    w.add_int32("t.i32", -1)
    w.add_float32("t.f32", 1e-6)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo")
    w.add_uint64("t.u64", 1 << 40)
    w.add_int64("t.i64", -(1 << 40))
    w.add_float64("t.f64", 0.1)
    w.add_array("t.arr_u32", [0, 0, 4, 128, 4])
    w.add_array("t.arr_str", ["a", "bb", ""])
    w.add_array("t.arr_nested", [[1, 2], [3]])
    # The gguf package refuses empty arrays; the Rust round-trip tests cover them.


def tensors(w):
    w.add_uint32("deepseek4.block_count", 1)
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a"])
    rng = np.random.default_rng(1)
    w.add_tensor("f32", rng.standard_normal((2, 8)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((3, 4)).astype(np.float16))
    w.add_tensor("i32", np.arange(6, dtype=np.int32).reshape(2, 3))
    for name, ty, nbytes in [("q8_0", Q.Q8_0, 34), ("q2_k", Q.Q2_K, 84), ("q4_k", Q.Q4_K, 144), ("iq2_xxs", Q.IQ2_XXS, 66)]:
        raw = rng.integers(0, 256, size=(2, nbytes), dtype=np.uint8)
        # f16 scales must not be NaN/inf for a dequant oracle; the parser does not care.
        w.add_tensor(name, raw, raw_dtype=ty)


write("meta_only", metadata_only)
write("tensors", tensors)
write("tensors_align64", tensors, alignment=64)
write("empty", lambda w: None)
print(f"wrote {len(list(out.iterdir()))} seeds to {out}")
