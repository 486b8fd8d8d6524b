//! A small JSON scanner that keeps the input's spelling: validates, minifies (whitespace outside
//! strings removed, nothing else touched) and walks the members of a top-level object in order.
//! serde_json would re-spell numbers and, without `preserve_order`, reorder keys, while spec §2.5
//! wants JSON object order and minified, not re-serialized, values.

/// Deepest nesting accepted; deeper input is treated as invalid (stack safety, spec §9 uses 256).
pub(crate) const MAX_DEPTH: usize = 256;

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// End of the string literal starting at `b[i] == '"'`.
fn scan_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let e = *b.get(i + 1)?;
                if e == b'u' {
                    let hex = b.get(i + 2..i + 6)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                } else if matches!(e, b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') {
                    i += 2;
                } else {
                    return None;
                }
            }
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
    None
}

fn scan_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], mut i: usize| {
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i > s).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(c) if c.is_ascii_digit() => i = digits(b, i)?,
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = digits(b, i)?;
    }
    Some(i)
}

/// End of the value starting at `b[i]` (no leading whitespace), or `None` if it is not valid JSON.
pub(crate) fn scan_value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => scan_string(b, i),
        b'{' | b'[' => {
            if depth >= MAX_DEPTH {
                return None;
            }
            let close = if b[i] == b'{' { b'}' } else { b']' };
            let mut j = skip_ws(b, i + 1);
            if b.get(j) == Some(&close) {
                return Some(j + 1);
            }
            loop {
                if close == b'}' {
                    if b.get(j) != Some(&b'"') {
                        return None;
                    }
                    j = skip_ws(b, scan_string(b, j)?);
                    if b.get(j) != Some(&b':') {
                        return None;
                    }
                    j = skip_ws(b, j + 1);
                }
                j = skip_ws(b, scan_value(b, j, depth + 1)?);
                match b.get(j) {
                    Some(b',') => j = skip_ws(b, j + 1),
                    Some(&c) if c == close => return Some(j + 1),
                    _ => return None,
                }
            }
        }
        b't' => b[i..].starts_with(b"true").then_some(i + 4),
        b'f' => b[i..].starts_with(b"false").then_some(i + 5),
        b'n' => b[i..].starts_with(b"null").then_some(i + 4),
        _ => scan_number(b, i),
    }
}

/// Whether `text` is exactly one JSON value with optional surrounding whitespace.
pub(crate) fn is_valid(text: &str) -> bool {
    let b = text.as_bytes();
    let i = skip_ws(b, 0);
    scan_value(b, i, 0).is_some_and(|end| skip_ws(b, end) == b.len())
}

/// Removes whitespace outside string literals. The input is assumed to be valid JSON; on other
/// input it still only drops whitespace outside (naively tracked) strings.
pub(crate) fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

/// A member of a top-level object: decoded key and the raw (unminified) value text.
pub(crate) struct Member<'a> {
    pub key: String,
    pub value: &'a str,
}

/// Members of `text` in order, if it is a valid JSON object (duplicate keys kept).
pub(crate) fn object_members(text: &str) -> Option<Vec<Member<'_>>> {
    let b = text.as_bytes();
    let mut j = skip_ws(b, 0);
    if b.get(j) != Some(&b'{') {
        return None;
    }
    if skip_ws(b, scan_value(b, j, 0)?) != b.len() {
        return None;
    }
    let mut members = Vec::new();
    j = skip_ws(b, j + 1);
    if b.get(j) == Some(&b'}') {
        return Some(members);
    }
    loop {
        let key_end = scan_string(b, j)?;
        let key = decode_string(&text[j..key_end])?;
        j = skip_ws(b, skip_ws(b, key_end) + 1);
        let value_end = scan_value(b, j, 1)?;
        members.push(Member {
            key,
            value: &text[j..value_end],
        });
        j = skip_ws(b, value_end);
        match b.get(j) {
            Some(b',') => j = skip_ws(b, j + 1),
            _ => return Some(members),
        }
    }
}

/// Decodes one JSON string literal (with quotes).
pub(crate) fn decode_string(literal: &str) -> Option<String> {
    serde_json::from_str::<String>(literal).ok()
}

/// Encodes `s` as the inside of a JSON string literal (no quotes), as serde_json escapes it.
pub(crate) fn escape_into(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_keeps_strings_and_number_spelling() {
        assert_eq!(
            minify(" { \"a b\" : [ 1.50 , 2e3 ] ,\n\"c\":\"x\\\" y\" } "),
            r#"{"a b":[1.50,2e3],"c":"x\" y"}"#
        );
    }

    #[test]
    fn object_members_keep_order_and_duplicates() {
        let m = object_members(r#"{"z": 1, "a": {"b": [true]}, "z": "s"}"#).unwrap();
        let keys: Vec<_> = m.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["z", "a", "z"]);
        assert_eq!(m[1].value, r#"{"b": [true]}"#);
        assert_eq!(m[2].value, r#""s""#);
        assert!(object_members("[1]").is_none());
        assert!(object_members(r#"{"a":1"#).is_none());
        assert!(object_members(r#"{"a":1} x"#).is_none());
    }

    #[test]
    fn validity_follows_the_json_grammar() {
        for ok in [
            "0",
            "-1.5e+3",
            "\"\\u00e9\"",
            "[]",
            "{}",
            " {\"a\":[null,false]} ",
        ] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in ["01", "1.", "[1,]", "{\"a\"}", "'x'", "\"\\x\"", "nul", ""] {
            assert!(!is_valid(bad), "{bad}");
        }
        let deep = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(is_valid(&deep));
        let deeper = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(!is_valid(&deeper));
    }
}
