//! Tokenizer throughput on English text (target: >= 5 MB/s on one core).
//!
//! `cargo bench -p ds4-chat --bench tokenize`. Input: the two long official test-vector prompts
//! (English technical prose and code-audit logs, from the golden cases) concatenated and repeated
//! to 1 MiB. There is no piece cache, so repetition does not flatter the number.

use std::io::Read;
use std::sync::OnceLock;

use divan::counter::BytesCount;
use divan::Bencher;
use ds4_chat::{render_chat, Message, Role, ThinkMode, Tokenizer};

fn main() {
    divan::main();
}

fn english() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let gz = include_bytes!("../tests/data/cases.jsonl.gz");
        let mut jsonl = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut jsonl)
            .expect("golden cases");
        let mut base = String::new();
        for line in jsonl.lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("golden line");
            if v["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("official_long"))
            {
                let t = v["text"].as_str().expect("text");
                // Strip the chat markers: plain English only.
                let body = t
                    .split("<｜User｜>")
                    .nth(1)
                    .and_then(|b| b.split("<｜Assistant｜>").next());
                base.push_str(body.expect("official prompt shape"));
                base.push('\n');
            }
        }
        let mut text = String::new();
        while text.len() < 1 << 20 {
            text.push_str(&base);
        }
        text
    })
}

#[divan::bench(sample_count = 10)]
fn encode_text_english(b: Bencher) {
    let tok = Tokenizer::builtin();
    let text = english();
    b.counter(BytesCount::new(text.len()))
        .bench(|| tok.encode_text(divan::black_box(text.as_bytes())));
}

#[divan::bench(sample_count = 10)]
fn encode_segments_chat(b: Bencher) {
    let tok = Tokenizer::builtin();
    let text = english();
    let messages = [
        Message::new(Role::System, "You are terse."),
        Message::new(Role::User, text),
    ];
    let r = render_chat(&messages, &[], ThinkMode::High);
    b.counter(BytesCount::new(text.len()))
        .bench(|| tok.encode_segments(divan::black_box(&r)));
}

#[divan::bench(sample_count = 10)]
fn decode_english(b: Bencher) {
    let tok = Tokenizer::builtin();
    let ids = tok.encode_text(english().as_bytes());
    b.counter(BytesCount::new(english().len()))
        .bench(|| tok.decode(divan::black_box(&ids)));
}

#[divan::bench(sample_count = 3)]
fn build_builtin_vocabulary() -> Tokenizer {
    let (tokens, merges) = ds4_chat::builtin_vocab();
    Tokenizer::from_vocab(tokens, merges).expect("builtin vocabulary")
}
