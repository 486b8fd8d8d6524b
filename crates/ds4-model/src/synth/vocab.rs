//! A synthetic GPT-2 byte-level BPE vocabulary (spec/server.md §1.1-1.5) for models built without
//! the real one: the 256 byte tokens, the seven protocol specials, merges for common English
//! words, then letter pairs, then unreachable filler tokens up to `n_vocab`. Every merge result is
//! a token, so BPE over it always ends on known symbols, and a tokenizer loads it unchanged.

/// The seven protocol specials (spec/server.md §1.5) in table order: BOS, EOS, USER, ASSISTANT,
/// THINK_OPEN, THINK_CLOSE, DSML.
pub const SPECIAL_TOKENS: [&str; 7] = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "｜DSML｜",
];

/// Token strings and merges (`"LEFT RIGHT"`, rank = index).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vocab {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
}

/// Smallest vocabulary [`synthetic_vocab`] can build: 3 leading specials (BOS, EOS, pad), 256
/// bytes, the other 5 specials.
pub const MIN_SYNTH_VOCAB: usize = 3 + 256 + 5;

/// spec/server.md §1.2: byte → code point of the byte-level encoding.
pub fn byte_to_char(b: u8) -> char {
    let direct = |b: u8| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    if direct(b) {
        return char::from(b);
    }
    let idx = (0..b).filter(|&x| !direct(x)).count() as u32;
    char::from_u32(256 + idx).expect("invariant: 256..324 are valid code points")
}

const WORDS: &str = "the of and to in is that it for was on are as with his they at be this from have or by \
    one had not but what all were when we there can an your which their said if do will each about how up out \
    them then she many some so these would other into has more her two like him see time could no make than \
    first been its who now people my made over did down only way find use may water long little very after \
    words called just where most know hello world model token text answer question code data think user \
    assistant system function value return true false null list string number";

/// Builds a vocabulary of exactly `n_vocab` tokens (at least [`MIN_SYNTH_VOCAB`]). Layout like
/// the real one (spec/server.md §1.9): BOS 0, EOS 1, pad 2, bytes 3..259, learned tokens, then
/// the other five specials last.
pub fn synthetic_vocab(n_vocab: usize) -> Vocab {
    assert!(
        n_vocab >= MIN_SYNTH_VOCAB,
        "invariant: synthetic vocabulary needs {MIN_SYNTH_VOCAB} tokens"
    );
    let mut tokens: Vec<String> = vec![
        SPECIAL_TOKENS[0].into(),
        SPECIAL_TOKENS[1].into(),
        "<｜▁pad▁｜>".into(),
    ];
    tokens.extend((0..=255u8).map(|b| byte_to_char(b).to_string()));
    let learned = n_vocab - MIN_SYNTH_VOCAB;
    let mut merges = Vec::new();
    let mut known: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut add =
        |left: &str, right: &str, tokens: &mut Vec<String>, merges: &mut Vec<String>| -> bool {
            if merges.len() >= learned {
                return false;
            }
            let joined = format!("{left}{right}");
            if known.insert(joined.clone()) {
                merges.push(format!("{left} {right}"));
                tokens.push(joined);
            }
            true
        };
    // Words, with and without the leading space (Ġ), merged left to right.
    'words: for w in WORDS.split_whitespace() {
        for prefixed in [format!("{}{w}", byte_to_char(b' ')), w.to_string()] {
            let chars: Vec<char> = prefixed.chars().collect();
            let mut acc = chars[0].to_string();
            for c in &chars[1..] {
                if !add(&acc, &c.to_string(), &mut tokens, &mut merges) {
                    break 'words;
                }
                acc.push(*c);
            }
        }
    }
    // Then pairs over space, letters and digits.
    let alphabet: Vec<char> = std::iter::once(byte_to_char(b' '))
        .chain('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .collect();
    'pairs: for a in &alphabet {
        for b in &alphabet {
            if !add(&a.to_string(), &b.to_string(), &mut tokens, &mut merges) {
                break 'pairs;
            }
        }
    }
    // Fillers: reachable by no merge; they contain U+FF5C so they detokenize verbatim.
    let mut i = 0;
    while tokens.len() < n_vocab - 5 {
        tokens.push(format!("<｜synth▁{i}｜>"));
        i += 1;
    }
    tokens.extend(SPECIAL_TOKENS[2..].iter().map(|s| s.to_string()));
    Vocab { tokens, merges }
}

/// `tokenizer.ggml.token_type` for `tokens` (ds4 ignores it; other GGUF tools read it), as the
/// real file marks them: control (3) for `<｜…｜>` tokens, user-defined (4) for `<think>`,
/// `</think>` and `｜DSML｜`, normal (1) for the rest.
pub fn token_types(tokens: &[String]) -> Vec<i32> {
    tokens
        .iter()
        .map(|t| match t.as_str() {
            "<think>" | "</think>" | "｜DSML｜" => 4,
            t if t.starts_with("<｜") && t.ends_with("｜>") => 3,
            _ => 1,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_mapping_matches_spec_examples() {
        assert_eq!(byte_to_char(0x00), '\u{100}');
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'A'), 'A');
        assert_eq!(byte_to_char(173), char::from_u32(256 + 67).unwrap_or('?'));
    }

    #[test]
    fn vocab_has_exact_size_specials_and_consistent_merges() {
        for n in [MIN_SYNTH_VOCAB, 512, 5000] {
            let v = synthetic_vocab(n);
            assert_eq!(v.tokens.len(), n);
            for s in SPECIAL_TOKENS {
                assert_eq!(
                    v.tokens.iter().filter(|t| *t == s).count(),
                    1,
                    "{s} in vocab of {n}"
                );
            }
            let set: std::collections::HashSet<&String> = v.tokens.iter().collect();
            assert_eq!(set.len(), n, "token strings are unique");
            for m in &v.merges {
                let (l, r) = m.split_once(' ').unwrap_or(("", ""));
                assert!(
                    set.contains(&l.to_string()) && set.contains(&r.to_string()),
                    "{m}"
                );
                assert!(set.contains(&format!("{l}{r}")), "{m}");
            }
        }
        assert_eq!(synthetic_vocab(512).tokens[0], SPECIAL_TOKENS[0]);
        assert_eq!(synthetic_vocab(512).tokens[3 + b' ' as usize], "Ġ");
        let types = token_types(&synthetic_vocab(512).tokens);
        assert_eq!(&types[..4], &[3, 3, 3, 1]);
        assert_eq!(&types[507..], &[3, 3, 4, 4, 4]);
    }
}
