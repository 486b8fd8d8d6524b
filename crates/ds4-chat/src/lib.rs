//! Byte-level BPE tokenizer, chat rendering with thinking modes, DSML tool-call render/parse/stream.
