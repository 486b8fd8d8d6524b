//! spec/server.md §1.3: ds4's pre-tokenizer, a hand-written approximation of the JoyAI split
//! regexes. ds4 is normative where it differs from the HF regexes (every non-ASCII character is
//! "letter-like"), so this follows the spec rules, not the regexes.

/// `!`..`/`, `:`..`@`, `[`..`` ` ``, `{`..`~`.
#[inline]
pub(crate) fn is_punct(c: u8) -> bool {
    matches!(c, 0x21..=0x2f | 0x3a..=0x40 | 0x5b..=0x60 | 0x7b..=0x7e)
}

#[inline]
fn is_newline(c: u8) -> bool {
    c == b'\n' || c == b'\r'
}

#[inline]
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// ASCII letters, and every byte >= 0x80: ds4 treats all non-ASCII text as letters.
#[inline]
fn is_letter_like(c: u8) -> bool {
    c.is_ascii_alphabetic() || c >= 0x80
}

/// Length of the "character" starting at `pos`, judged from the lead byte alone (§1.3): continuation
/// bytes are not validated, and a sequence that would run past the end counts as one byte.
#[inline]
pub(crate) fn char_len(text: &[u8], pos: usize) -> usize {
    let c = text[pos];
    let n = if c < 0x80 {
        1
    } else if c & 0xe0 == 0xc0 {
        2
    } else if c & 0xf0 == 0xe0 {
        3
    } else if c & 0xf8 == 0xf0 {
        4
    } else {
        1
    };
    if pos + n > text.len() {
        1
    } else {
        n
    }
}

/// Code point of the character at `pos` under the same lax decoding as [`char_len`].
fn code_point(text: &[u8], pos: usize) -> u32 {
    let n = char_len(text, pos);
    let c = text[pos] as u32;
    if n == 1 {
        return c;
    }
    let mut cp = c & (0x7f >> n);
    for &b in &text[pos + 1..pos + n] {
        cp = (cp << 6) | (b as u32 & 0x3f);
    }
    cp
}

/// CJK unified ideographs U+4E00–U+9FA5, hiragana, katakana.
fn is_cjk(cp: u32) -> bool {
    matches!(cp, 0x4e00..=0x9fa5 | 0x3040..=0x309f | 0x30a0..=0x30ff)
}

fn is_cjk_at(text: &[u8], pos: usize) -> bool {
    text[pos] >= 0x80 && is_cjk(code_point(text, pos))
}

fn skip_letters(text: &[u8], mut pos: usize) -> usize {
    while pos < text.len() && is_letter_like(text[pos]) {
        pos += char_len(text, pos);
    }
    pos
}

/// End (exclusive) of the piece that starts at `start` (§1.3 rules 1–9, first match wins).
fn piece_end(text: &[u8], start: usize) -> usize {
    let n = text.len();
    let c = text[start];
    let next = text.get(start + 1).copied();
    let mut pos = start;
    if c.is_ascii_digit() {
        // Rule 1: at most three digits per piece.
        while pos < n && text[pos].is_ascii_digit() && pos - start < 3 {
            pos += 1;
        }
    } else if is_cjk_at(text, pos) {
        // Rule 2: CJK/kana run.
        while pos < n && is_cjk_at(text, pos) {
            pos += char_len(text, pos);
        }
    } else if is_punct(c) && next.is_some_and(|b| b.is_ascii_alphabetic()) {
        // Rule 3: one symbol + ASCII letters (`'s`, `(bar`, `$HOME`).
        pos += 1;
        while pos < n && text[pos].is_ascii_alphabetic() {
            pos += 1;
        }
    } else if is_letter_like(c) {
        // Rule 4: letter-like run.
        pos = skip_letters(text, pos);
    } else if !is_newline(c) && !is_punct(c) && next.is_some_and(is_letter_like) {
        // Rule 5: one prefix byte (usually the space) + letters.
        pos = skip_letters(text, pos + 1);
    } else if c == b' ' && next.is_some_and(is_punct) {
        // Rule 6: space + punctuation run + trailing newlines.
        pos += 1;
        while pos < n && is_punct(text[pos]) {
            pos += 1;
        }
        while pos < n && is_newline(text[pos]) {
            pos += 1;
        }
    } else if is_punct(c) {
        // Rule 7: punctuation run + trailing newlines (deliberate: affects long-context logits).
        while pos < n && is_punct(text[pos]) {
            pos += 1;
        }
        while pos < n && is_newline(text[pos]) {
            pos += 1;
        }
    } else if is_space(c) {
        // Rule 8: whitespace run, cut after its last newline, or leave its last space to the
        // following word/punctuation.
        let mut end = pos;
        let mut after_last_newline = None;
        while end < n && is_space(text[end]) {
            if is_newline(text[end]) {
                after_last_newline = Some(end + 1);
            }
            end += 1;
        }
        pos = match after_last_newline {
            Some(p) => p,
            None if end - start >= 2
                && end < n
                && (is_letter_like(text[end]) || is_punct(text[end])) =>
            {
                end - 1
            }
            None => end,
        };
    } else {
        // Rule 9: one character.
        pos += char_len(text, pos);
    }
    if pos == start {
        pos += char_len(text, pos);
    }
    pos
}

/// Iterator over the pieces of `text`; every piece is non-empty and they tile `text` exactly.
pub(crate) struct Pieces<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.text.len() {
            return None;
        }
        let start = self.pos;
        self.pos = piece_end(self.text, start);
        Some(&self.text[start..self.pos])
    }
}

/// Splits `text` into pre-tokenizer pieces.
pub(crate) fn pieces(text: &[u8]) -> Pieces<'_> {
    Pieces { text, pos: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<String> {
        pieces(s.as_bytes())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }

    /// Every row of the spec §1.3 table.
    #[test]
    fn pretokenizer_matches_spec_table() {
        let rows: &[(&str, &[&str])] = &[
            (
                "Hello world, it's 12345 tokens!",
                &[
                    "Hello", " world", ",", " it", "'s", " ", "123", "45", " tokens", "!",
                ],
            ),
            (
                "    int x = a->b;\n\n  return 0;\n}",
                &[
                    "   ", " int", " x", " =", " a", "->", "b", ";\n\n", " ", " return", " ", "0",
                    ";\n", "}",
                ],
            ),
            (
                "foo(bar) >;\n next",
                &["foo", "(bar", ")", " >;\n", " next"],
            ),
            ("perché così?", &["perché", " così", "?"]),
            ("中文テスト abc", &["中文テスト", " abc"]),
            ("x  y", &["x", " ", " y"]),
            (
                "line1\r\n\r\nline2",
                &["line", "1", "\r\n\r\n", "line", "2"],
            ),
            ("'s 'll", &["'s", " '", "ll"]),
            ("a&&b", &["a", "&&", "b"]),
            ("$HOME/.cache", &["$HOME", "/.", "cache"]),
            ("v1.2.3", &["v", "1", ".", "2", ".", "3"]),
        ];
        for (input, want) in rows {
            assert_eq!(split(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn truncated_utf8_counts_as_single_bytes() {
        let text = b"a\xe4\x61";
        let got: Vec<&[u8]> = pieces(text).collect();
        // 0xE4 would need 3 bytes but only 2 remain: it is a 1-byte letter-like char.
        assert_eq!(got, vec![&text[..]]);
        assert_eq!(char_len(b"\xf0\x9f", 0), 1);
        assert_eq!(char_len(b"\xe4ab", 0), 3);
    }
}
