//! Spellings shared by the parser, the stream projector and the tracker (spec §2.4).

use super::Syntax;

impl Syntax {
    /// All three, in spec §3.1 pattern priority.
    pub(crate) const ALL: [Syntax; 3] = [Syntax::Full, Syntax::Short, Syntax::Xml];

    /// What precedes a tag name in an opener: `<｜DSML｜`, `<DSML｜`, `<`.
    pub(crate) fn open(self) -> &'static str {
        match self {
            Syntax::Full => "<｜DSML｜",
            Syntax::Short => "<DSML｜",
            Syntax::Xml => "<",
        }
    }

    /// The block opener, e.g. `<｜DSML｜tool_calls>`.
    pub(crate) const fn block_open(self) -> &'static str {
        match self {
            Syntax::Full => "<｜DSML｜tool_calls>",
            Syntax::Short => "<DSML｜tool_calls>",
            Syntax::Xml => "<tool_calls>",
        }
    }

    /// The block closer, e.g. `</｜DSML｜tool_calls>`.
    pub(crate) const fn block_close(self) -> &'static str {
        match self {
            Syntax::Full => "</｜DSML｜tool_calls>",
            Syntax::Short => "</DSML｜tool_calls>",
            Syntax::Xml => "</tool_calls>",
        }
    }

    /// The parameter closer, e.g. `</｜DSML｜parameter>`.
    pub(crate) fn param_close(self) -> &'static str {
        match self {
            Syntax::Full => "</｜DSML｜parameter>",
            Syntax::Short => "</DSML｜parameter>",
            Syntax::Xml => "</parameter>",
        }
    }

    /// The invoke closer, e.g. `</｜DSML｜invoke>`.
    pub(crate) fn invoke_close(self) -> &'static str {
        match self {
            Syntax::Full => "</｜DSML｜invoke>",
            Syntax::Short => "</DSML｜invoke>",
            Syntax::Xml => "</invoke>",
        }
    }
}

/// The earliest block opener in `text` (any spelling): `(position, syntax)`. Used by the streaming
/// detectors, which take the earliest position (spec §3.1 step 2 note).
pub(crate) fn find_earliest_opener(text: &[u8]) -> Option<(usize, Syntax)> {
    Syntax::ALL
        .into_iter()
        .filter_map(|s| find(text, s.block_open().as_bytes()).map(|p| (p, s)))
        .min_by_key(|&(p, _)| p)
}

/// First occurrence of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            None => return None,
            Some(off) => {
                i += off;
                if hay[i..].starts_with(needle) {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

/// Longest `k` such that the last `k` bytes of `text` are a proper prefix of `pattern`.
pub(crate) fn partial_suffix(text: &[u8], pattern: &[u8]) -> usize {
    let max = (pattern.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| pattern.starts_with(&text[text.len() - k..]))
        .unwrap_or(0)
}

/// The five entities of spec §3.1; any other `&` is kept as is.
const ENTITIES: [(&str, char); 5] = [
    ("&amp;", '&'),
    ("&lt;", '<'),
    ("&gt;", '>'),
    ("&quot;", '"'),
    ("&apos;", '\''),
];

/// Entity-decodes `s` (spec §3.1).
pub(crate) fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match ENTITIES.iter().find(|(e, _)| rest.starts_with(e)) {
            Some((e, c)) => {
                out.push(*c);
                rest = &rest[e.len()..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Length of a trailing `&…` that could still become one of the entities (held back while
/// streaming, spec §3.7).
pub(crate) fn partial_entity_len(s: &[u8]) -> usize {
    let Some(amp) = s.iter().rposition(|&b| b == b'&') else {
        return 0;
    };
    let tail = &s[amp..];
    let could_complete = ENTITIES
        .iter()
        .any(|(e, _)| e.len() > tail.len() && e.as_bytes().starts_with(tail));
    if could_complete {
        tail.len()
    } else {
        0
    }
}

/// Attributes of a tag: the text between the tag name and `>`.
#[derive(Debug, Default)]
pub(crate) struct Attrs {
    pub name: Option<String>,
    pub string: Option<String>,
}

/// Parses `key="value"` pairs. `None` on malformed attribute syntax. Values of `name` are
/// entity-decoded; unknown keys are ignored.
pub(crate) fn parse_attrs(s: &str) -> Option<Attrs> {
    let mut attrs = Attrs::default();
    let mut rest = s.trim_start();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == '"') {
            return None;
        }
        let after = rest[eq + 1..].trim_start();
        let body = after.strip_prefix('"')?;
        let end = body.find('"')?;
        let value = &body[..end];
        match key {
            "name" => attrs.name = Some(decode_entities(value)),
            "string" => attrs.string = Some(value.to_owned()),
            _ => {}
        }
        rest = body[end + 1..].trim_start();
    }
    Some(attrs)
}

/// ASCII whitespace as the parser skips it between tags.
pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_decode_only_the_five() {
        assert_eq!(
            decode_entities("a &amp;&lt;&gt;&quot;&apos; &nbsp; &"),
            "a &<>\"' &nbsp; &"
        );
        assert_eq!(partial_entity_len(b"x &am"), 3);
        assert_eq!(partial_entity_len(b"x &amp"), 4);
        assert_eq!(partial_entity_len(b"x && y"), 0);
        assert_eq!(partial_entity_len(b"x &"), 1);
    }

    #[test]
    fn attrs_parse_and_reject() {
        let a = parse_attrs(r#" name="a&amp;b" string="true""#).unwrap();
        assert_eq!(a.name.as_deref(), Some("a&b"));
        assert_eq!(a.string.as_deref(), Some("true"));
        assert!(parse_attrs(r#" name="x"#).is_none());
        assert!(parse_attrs(" junk").is_none());
        assert!(parse_attrs("").unwrap().name.is_none());
    }

    #[test]
    fn finds_earliest_opener_and_partial_suffixes() {
        let t = "x <tool_calls> <｜DSML｜tool_calls>".as_bytes();
        assert_eq!(find_earliest_opener(t), Some((2, Syntax::Xml)));
        assert_eq!(partial_suffix(b"abc</", b"</parameter>"), 2);
        assert_eq!(partial_suffix(b"abc", b"</parameter>"), 0);
        assert_eq!(find(b"aab", b"ab"), Some(1));
    }
}
