//! Shared by the integration tests: the golden tokenizer cases, by name.

use std::io::Read;

use serde_json::Value;

/// One line of `cases.jsonl`: (input bytes, ids).
pub fn golden_case(name: &str) -> (String, Vec<u32>) {
    let gz = include_bytes!("../data/cases.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        if v["name"] == name {
            let ids = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            return (v["text"].as_str().unwrap().to_owned(), ids);
        }
    }
    panic!("no golden case {name}");
}
