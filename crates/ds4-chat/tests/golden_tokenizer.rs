//! Golden tokenizer cases (`shared/golden/tokenizer/cases.jsonl`, ids from ds4 itself), copied
//! gzip'd into `tests/data/cases.jsonl.gz` so the crate tests stand alone. sha256 of the
//! uncompressed file: 137735fdd13a9ec442ee9a2ab671d52340cd008cef13e243e176810b34356221.

use std::io::Read;

use ds4_chat::{SpecialKind, Tokenizer};
use serde_json::Value;

struct Case {
    name: String,
    rendered: bool,
    input: Vec<u8>,
    ids: Vec<u32>,
    decoded: Vec<u8>,
    api_prompt_tokens: Option<u64>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn cases() -> Vec<Case> {
    let gz = include_bytes!("data/cases.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            let input = hex(v["text_hex"].as_str().unwrap());
            let decoded = match v["decoded_ok"].as_bool().unwrap() {
                true => input.clone(),
                false => hex(v["decoded_hex"].as_str().unwrap()),
            };
            Case {
                name: v["name"].as_str().unwrap().to_owned(),
                rendered: v["mode"] == "rendered-with-specials",
                input,
                ids: v["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_u64().unwrap() as u32)
                    .collect(),
                decoded,
                api_prompt_tokens: v.get("api_prompt_tokens").and_then(Value::as_u64),
            }
        })
        .collect()
}

/// The one case where we differ on purpose: ds4 stops at the first NUL (spec §1.3 "do not copy").
const NUL_CASE: &str = "bytes_nul_terminates";

#[test]
fn every_golden_case_gives_ds4_ids_and_round_trips() {
    let tok = Tokenizer::builtin();
    let cases = cases();
    assert_eq!(cases.len(), 103);
    let mut n_official = 0;
    for c in &cases {
        let ids = if c.rendered {
            tok.encode_rendered(&c.input)
        } else {
            tok.encode_text(&c.input)
        };
        if c.name == NUL_CASE {
            let nul = c.input.iter().position(|&b| b == 0).unwrap();
            assert_eq!(
                tok.encode_text(&c.input[..nul]),
                c.ids,
                "{}: prefix before NUL",
                c.name
            );
            assert_eq!(tok.decode(&c.ids), c.decoded);
            assert_eq!(tok.decode(&ids), c.input, "NUL is an ordinary byte here");
            continue;
        }
        assert_eq!(ids, c.ids, "case {}", c.name);
        assert_eq!(tok.decode(&ids), c.decoded, "decode of case {}", c.name);
        if let Some(n) = c.api_prompt_tokens {
            assert_eq!(
                ids.len() as u64,
                n,
                "official prompt token count of {}",
                c.name
            );
            n_official += 1;
        }
    }
    assert_eq!(n_official, 5, "the 5 official vectors of the golden README");
}

#[test]
fn builtin_vocab_facts_match_spec() {
    let tok = Tokenizer::builtin();
    assert_eq!(tok.n_vocab(), 129280);
    let sp = tok.special();
    let want = [
        (SpecialKind::Bos, 0),
        (SpecialKind::Eos, 1),
        (SpecialKind::User, 128803),
        (SpecialKind::Assistant, 128804),
        (SpecialKind::Think, 128821),
        (SpecialKind::ThinkEnd, 128822),
        (SpecialKind::Dsml, 128825),
    ];
    for (kind, id) in want {
        assert_eq!(sp.id(kind), id, "{kind:?}");
        assert_eq!(sp.kind_of(id), Some(kind));
        assert_eq!(tok.token_bytes(id), kind.text().as_bytes());
    }
    assert_eq!(tok.token_str(223), Some("Ġ"));
    assert_eq!(tok.token_bytes(223), b" ");
    assert_eq!(tok.token_bytes(200), b"\t");
    assert_eq!(tok.token_bytes(u32::MAX), b"");
    let (tokens, merges) = ds4_chat::builtin_vocab();
    assert_eq!((tokens.len(), merges.len()), (129280, 127741));
    assert_eq!(&merges[..5], ["Ġ t", "Ġ a", "i n", "Ġ Ġ", "h e"]);
}

#[test]
fn from_gguf_reads_the_vocabulary_and_names_missing_keys() {
    use ds4_gguf::{GgufFile, GgufWriter, Value, ValueType};
    let (tokens, merges) = ds4_chat::builtin_vocab();
    let strings = |v: &[String]| {
        Value::Array(
            ValueType::String,
            v.iter().map(|s| Value::String(s.clone())).collect(),
        )
    };
    let meta = vec![
        ("tokenizer.ggml.tokens".to_owned(), strings(&tokens)),
        ("tokenizer.ggml.merges".to_owned(), strings(&merges)),
    ];
    let bytes = GgufWriter::new(Vec::new(), &meta, &[])
        .unwrap()
        .finish()
        .unwrap();
    let gguf = GgufFile::from_bytes(bytes).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let text = "Hello world, it's 12345 tokens! perché 中文テスト";
    assert_eq!(
        tok.encode_text(text.as_bytes()),
        Tokenizer::builtin().encode_text(text.as_bytes())
    );

    let bytes = GgufWriter::new(Vec::new(), &meta[..1], &[])
        .unwrap()
        .finish()
        .unwrap();
    let err = Tokenizer::from_gguf(&GgufFile::from_bytes(bytes).unwrap()).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.merges"), "{err}");
}

#[test]
fn missing_special_is_a_named_error() {
    let mut tokens: Vec<String> = ds4_chat::builtin_vocab().0;
    tokens[128825] = "not dsml".into();
    let err = Tokenizer::from_vocab(tokens, vec![]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "required tokenizer token is missing: ｜DSML｜"
    );
}

/// The golden README's official-vector table: `BOS USER text ASSISTANT </think>` is
/// `render_chat([user], no tools, non-thinking)`, and its token count is the API's prompt_tokens.
#[test]
fn official_vectors_render_to_the_api_prompt_token_counts() {
    use ds4_chat::{render_chat, Message, Role, ThinkMode};
    let tok = Tokenizer::builtin();
    let mut n = 0;
    for c in cases().iter().filter(|c| c.api_prompt_tokens.is_some()) {
        let text = String::from_utf8(c.input.clone()).unwrap();
        let user = text
            .strip_prefix("<｜begin▁of▁sentence｜><｜User｜>")
            .and_then(|t| t.strip_suffix("<｜Assistant｜></think>"))
            .unwrap();
        let r = render_chat(&[Message::new(Role::User, user)], &[], ThinkMode::None);
        assert_eq!(r.text(), text);
        let ids = tok.encode_segments(&r);
        assert_eq!(ids, c.ids, "{}", c.name);
        assert_eq!(Some(ids.len() as u64), c.api_prompt_tokens);
        n += 1;
    }
    assert_eq!(n, 5);
}
