//! DSML parsing (spec §3.1) and streaming (§3.7, §4.12): the §8.2 parsing/streaming behaviours.

use ds4_chat::dsml::{parse_generated_message, StreamConfig, StreamEvent, StreamParser, Syntax};
use proptest::prelude::*;

const WEATHER_BLOCK: &str = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Rome</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

// ---- §3.1 parse_generated_message -------------------------------------------------------------

#[test]
fn parses_canonical_block_with_thinking() {
    let text = format!("Need the weather tool.</think>Let me check.{WEATHER_BLOCK}");
    let p = parse_generated_message(&text, true);
    assert_eq!(p.reasoning.as_deref(), Some("Need the weather tool."));
    assert_eq!(p.content, "Let me check.");
    assert_eq!(p.tool_calls.len(), 1);
    assert_eq!(p.tool_calls[0].name, "get_weather");
    assert_eq!(p.tool_calls[0].arguments, r#"{"city": "Rome", "days": 2}"#);
    assert_eq!(
        p.tool_calls[0].compact_arguments(),
        r#"{"city":"Rome","days":2}"#
    );
    assert_eq!(p.raw_dsml.as_deref(), Some(WEATHER_BLOCK));
    assert_eq!(p.syntax, Some(Syntax::Full));
    assert!(p.error.is_none());
}

/// #39 parse_short_dsml_and_canonical_suffix (parsing half) and the plain XML spelling.
#[test]
fn parses_degraded_spellings() {
    let short = "<DSML｜tool_calls>\n<DSML｜invoke name=\"f\">\n<DSML｜parameter name=\"a\" string=\"true\">x</DSML｜parameter>\n</DSML｜invoke>\n</DSML｜tool_calls>";
    let p = parse_generated_message(&format!("ok{short}"), false);
    assert_eq!(p.syntax, Some(Syntax::Short));
    assert_eq!(p.content, "ok");
    assert_eq!(p.tool_calls[0].arguments, r#"{"a": "x"}"#);
    let xml = "\n\n<tool_calls><invoke name=\"g\"><parameter name=\"n\" string=\"false\"> [1, 2] </parameter></invoke></tool_calls>trailing";
    let p = parse_generated_message(xml, false);
    assert_eq!(p.syntax, Some(Syntax::Xml));
    assert_eq!(p.tool_calls[0].arguments, r#"{"n": [1,2]}"#);
    assert_eq!(
        p.raw_dsml.as_deref(),
        Some(&xml[..xml.len() - "trailing".len()]),
        "text after the closer is discarded"
    );
}

/// spec §3.1 step 2: pattern priority, not earliest position.
#[test]
fn full_spelling_wins_over_an_earlier_xml_block() {
    let text = "<tool_calls><invoke name=\"x\"></invoke></tool_calls> and <｜DSML｜tool_calls><｜DSML｜invoke name=\"y\"></｜DSML｜invoke></｜DSML｜tool_calls>";
    let p = parse_generated_message(text, false);
    assert_eq!(p.tool_calls[0].name, "y");
    assert_eq!(p.tool_calls[0].arguments, "{}");
}

/// #40 dsml_parser_recovers_loose_nested_parameters
#[test]
fn recovers_loose_nested_parameters() {
    let text = "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"edit\">\n<｜DSML｜parameter name=\"path\" string=\"true\">a.c</｜DSML｜parameter>\n<｜DSML｜parameter name=\"edits\">\n<｜DSML｜parameter name=\"old\" string=\"true\">x &amp;&amp; y</｜DSML｜parameter>\n<｜DSML｜parameter name=\"new\" string=\"true\">&lt;z&gt;</｜DSML｜parameter>\n</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let p = parse_generated_message(text, false);
    assert!(p.error.is_none(), "{:?}", p.error);
    let args: serde_json::Value = serde_json::from_str(&p.tool_calls[0].arguments).unwrap();
    assert_eq!(
        args,
        serde_json::json!({"path": "a.c", "edits": {"old": "x && y", "new": "<z>"}})
    );
    // The outer closer is optional.
    let no_outer = text.replacen(
        "</｜DSML｜parameter>\n</｜DSML｜invoke>",
        "</｜DSML｜invoke>",
        1,
    );
    assert_eq!(
        parse_generated_message(&no_outer, false).tool_calls.len(),
        1
    );
}

/// #41 tool_parse_failure_returns_recoverable_finish (parser half: the raw text is the content).
#[test]
fn malformed_blocks_fail_whole() {
    let bad = [
        "<｜DSML｜tool_calls><｜DSML｜invoke>\n</｜DSML｜invoke></｜DSML｜tool_calls>", // no name
        "<｜DSML｜tool_calls>text<｜DSML｜invoke name=\"f\"></｜DSML｜invoke></｜DSML｜tool_calls>",
        "<｜DSML｜tool_calls><｜DSML｜invoke name=\"f\"", // missing '>'
        "<｜DSML｜tool_calls><｜DSML｜invoke name=\"f\"><｜DSML｜parameter name=\"a\" string=\"true\">x", // no closer
        "<｜DSML｜tool_calls><｜DSML｜invoke name=\"f\"></｜DSML｜invoke>", // no block closer
    ];
    for text in bad {
        let raw = format!("<think>r</think>{text}");
        let p = parse_generated_message(&raw, true);
        assert!(p.error.is_some(), "{text}");
        assert!(p.tool_calls.is_empty());
        assert_eq!(p.content, raw);
        assert!(p.reasoning.is_none());
    }
}

/// #42 thinking_dsml_is_not_executable_before_think_close, #43 ..._after_think_close_is_executable
#[test]
fn dsml_is_executable_only_after_think_close() {
    let inside = format!("let me try{WEATHER_BLOCK}");
    let p = parse_generated_message(&inside, true);
    assert!(p.tool_calls.is_empty());
    assert_eq!(
        p.content, inside,
        "no </think>: the whole text is content (§9)"
    );
    let inside_closed = format!("plan{WEATHER_BLOCK}</think>answer");
    assert!(parse_generated_message(&inside_closed, true)
        .tool_calls
        .is_empty());
    let after = format!("plan</think>{WEATHER_BLOCK}");
    let p = parse_generated_message(&after, true);
    assert_eq!(p.tool_calls.len(), 1);
    assert_eq!(p.content, "");
    // Without thinking the block is found anywhere.
    assert_eq!(parse_generated_message(&inside, false).tool_calls.len(), 1);
}

/// #67 tool_separator_whitespace_is_not_content
#[test]
fn separator_whitespace_is_not_content() {
    let text = format!("I will inspect the files.\n\n{WEATHER_BLOCK}");
    let p = parse_generated_message(&text, false);
    assert_eq!(p.content, "I will inspect the files.");
    assert!(p.reasoning.is_none());
}

#[test]
fn json_parameter_edge_cases() {
    let wrap = |body: &str| {
        format!("<｜DSML｜tool_calls><｜DSML｜invoke name=\"f\"><｜DSML｜parameter name=\"v\" string=\"false\">{body}</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜tool_calls>")
    };
    let args = |body: &str| parse_generated_message(&wrap(body), false).tool_calls[0].clone();
    assert_eq!(args("").arguments, r#"{"v": null}"#);
    assert_eq!(
        args(" {\"a\" : [1, 2.50]} ").arguments,
        r#"{"v": {"a":[1,2.50]}}"#
    );
    let bad = args("{oops");
    assert_eq!(bad.arguments, r#"{"v": {oops}"#);
    assert_eq!(bad.compact_arguments(), "{}");
    // Missing `string` attribute: a string, entity-decoded; other `&` kept.
    let p = parse_generated_message(
        "<｜DSML｜tool_calls><｜DSML｜invoke name=\"a&amp;b\"><｜DSML｜parameter name=\"q\">1 &amp; 2 &x; \"q\"\n</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜tool_calls>",
        false,
    );
    assert_eq!(p.tool_calls[0].name, "a&b");
    assert_eq!(p.tool_calls[0].arguments, r#"{"q": "1 & 2 &x; \"q\"\n"}"#);
}

#[test]
fn no_block_splits_reasoning_and_content() {
    let p = parse_generated_message("<think>why</think>because", true);
    assert_eq!(
        (p.reasoning.as_deref(), p.content.as_str()),
        (Some("why"), "because")
    );
    let p = parse_generated_message("just text", false);
    assert_eq!((p.reasoning, p.content.as_str()), (None, "just text"));
}

// ---- §3.7 / §4.12 StreamParser ------------------------------------------------------------------

fn run(cfg: StreamConfig, chunks: &[&[u8]]) -> (Vec<StreamEvent>, StreamParser) {
    let mut p = StreamParser::new(cfg);
    let mut out = Vec::new();
    for c in chunks {
        p.push(c, &mut out);
    }
    p.finish(&mut out);
    (out, p)
}

fn bytewise(text: &str) -> Vec<&[u8]> {
    text.as_bytes().chunks(1).collect()
}

/// Merges adjacent text events of one kind and argument fragments of one call, so runs with
/// different chunkings compare equal.
fn collapse(events: &[StreamEvent]) -> Vec<StreamEvent> {
    let mut out: Vec<StreamEvent> = Vec::new();
    for e in events {
        match (out.last_mut(), e) {
            (Some(StreamEvent::Reasoning(a)), StreamEvent::Reasoning(b)) => a.push_str(b),
            (Some(StreamEvent::Content(a)), StreamEvent::Content(b)) => a.push_str(b),
            (
                Some(StreamEvent::ToolArguments {
                    index: i,
                    fragment: a,
                }),
                StreamEvent::ToolArguments {
                    index: j,
                    fragment: b,
                },
            ) if i == j => a.push_str(b),
            _ => out.push(e.clone()),
        }
    }
    out
}

const TOOLS_THINKING: StreamConfig = StreamConfig {
    thinking: true,
    tools_active: true,
};

/// #28 openai_tool_stream_sends_incremental_text and the §4.6.5 verbatim fragment sequence (#32).
#[test]
fn stream_orders_reasoning_content_then_tool_fragments() {
    let text = format!("<think>Need the weather tool.</think>Let me check.{WEATHER_BLOCK}");
    let (events, p) = run(TOOLS_THINKING, &[text.as_bytes()]);
    let frag = |f: &str| StreamEvent::ToolArguments {
        index: 0,
        fragment: f.into(),
    };
    assert_eq!(
        events,
        vec![
            StreamEvent::Reasoning("Need the weather tool.".into()),
            StreamEvent::Content("Let me check.".into()),
            StreamEvent::ToolCallStart {
                index: 0,
                name: "get_weather".into()
            },
            frag("{"),
            frag("\"city\":\""),
            frag("Rome"),
            frag("\""),
            frag(",\"days\":"),
            frag("2"),
            frag("}"),
            StreamEvent::ToolCallEnd { index: 0 },
        ]
    );
    assert!(p.block_closed() && p.streamed_tool_header() && !p.projection_failed());
    // Byte by byte: same content, fragments possibly split finer.
    let (events2, _) = run(TOOLS_THINKING, &bytewise(&text));
    assert_eq!(collapse(&events2), collapse(&events));
}

/// #31 openai_chat_stream_splits_reasoning_without_tools
#[test]
fn reasoning_streams_with_seven_byte_hold_back() {
    let cfg = StreamConfig {
        thinking: true,
        tools_active: false,
    };
    let mut p = StreamParser::new(cfg);
    let mut out = Vec::new();
    p.push(b"<think>Thinking hard about", &mut out);
    assert_eq!(out, vec![StreamEvent::Reasoning("Thinking har".into())]);
    p.push(b" it.</thi", &mut out);
    p.push(b"nk>Done", &mut out);
    p.finish(&mut out);
    assert_eq!(
        collapse(&out),
        vec![
            StreamEvent::Reasoning("Thinking hard about it.".into()),
            StreamEvent::Content("Done".into())
        ]
    );
    assert!(out.iter().all(|e| !format!("{e:?}").contains("</think>")));
    assert!(out.len() >= 3, "reasoning arrives in more than one piece");
}

#[test]
fn unclosed_thinking_flushes_as_reasoning() {
    let (events, _) = run(
        TOOLS_THINKING,
        &["still thinking <｜DSML｜tool_calls>".as_bytes()],
    );
    assert_eq!(
        collapse(&events),
        vec![StreamEvent::Reasoning(
            "still thinking <｜DSML｜tool_calls>".into()
        )]
    );
}

/// #33 openai_tool_stream_waits_for_incomplete_tool_tags
#[test]
fn incomplete_tags_produce_no_events() {
    let cfg = StreamConfig {
        thinking: false,
        tools_active: true,
    };
    let mut p = StreamParser::new(cfg);
    let mut out = Vec::new();
    p.push("Sure.\n\n<｜DSML｜tool".as_bytes(), &mut out);
    assert_eq!(out, vec![StreamEvent::Content("Sure.".into())]);
    p.push(
        "_calls>\n<｜DSML｜invoke name=\"get_wea".as_bytes(),
        &mut out,
    );
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(p.block_started());
    p.push(
        "ther\">\n<｜DSML｜parameter name=\"city\" string=\"tr".as_bytes(),
        &mut out,
    );
    assert_eq!(out.len(), 3);
    p.push("ue\">Ro".as_bytes(), &mut out);
    assert_eq!(
        out[3],
        StreamEvent::ToolArguments {
            index: 0,
            fragment: "\"city\":\"".into()
        }
    );
    assert_eq!(
        out[4],
        StreamEvent::ToolArguments {
            index: 0,
            fragment: "Ro".into()
        }
    );
    p.push("me</".as_bytes(), &mut out);
    assert_eq!(
        out[5],
        StreamEvent::ToolArguments {
            index: 0,
            fragment: "me".into()
        }
    );
    assert_eq!(out.len(), 6, "partial closer held");
}

/// #34 openai_tool_stream_sends_partial_raw_arguments, #35 ..._holds_partial_dsml_entities,
/// #36 ..._holds_partial_utf8_arguments
#[test]
fn body_hold_backs() {
    let cfg = StreamConfig {
        thinking: false,
        tools_active: true,
    };
    let head = "<｜DSML｜tool_calls><｜DSML｜invoke name=\"f\">";
    let mut p = StreamParser::new(cfg);
    let mut out = Vec::new();
    p.push(
        format!("{head}<｜DSML｜parameter name=\"xs\" string=\"false\">[1,2,3").as_bytes(),
        &mut out,
    );
    assert_eq!(
        out.last(),
        Some(&StreamEvent::ToolArguments {
            index: 0,
            fragment: "[1,2,3".into()
        })
    );

    let mut p = StreamParser::new(cfg);
    let mut out = Vec::new();
    p.push(
        format!("{head}<｜DSML｜parameter name=\"c\" string=\"true\">a &amp").as_bytes(),
        &mut out,
    );
    assert_eq!(
        out.last(),
        Some(&StreamEvent::ToolArguments {
            index: 0,
            fragment: "a ".into()
        })
    );
    p.push(b"; b", &mut out);
    assert_eq!(
        out.last(),
        Some(&StreamEvent::ToolArguments {
            index: 0,
            fragment: "& b".into()
        })
    );

    let emoji = "😀".as_bytes();
    let mut p = StreamParser::new(cfg);
    let mut out = Vec::new();
    p.push(
        format!("{head}<｜DSML｜parameter name=\"c\" string=\"true\">x").as_bytes(),
        &mut out,
    );
    p.push(&emoji[..2], &mut out);
    p.push(&emoji[2..], &mut out);
    let args: String = out
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolArguments { fragment, .. } => Some(fragment.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(args, "{\"c\":\"x😀");
    assert!(!args.contains('\u{fffd}'));
}

/// #37 openai_tool_stream_handles_multiple_calls and #27 anthropic_tool_stream_sends_live_tool_use
#[test]
fn multiple_calls_and_live_fragments() {
    let cfg = StreamConfig {
        thinking: false,
        tools_active: true,
    };
    let chunks: &[&[u8]] = &[
        "<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"Bash\">\n<｜DSML｜parameter name=\"command\" string=\"true\">".as_bytes(),
        b"echo partial",
        b" done",
        "</｜DSML｜parameter>\n</｜DSML｜invoke>\n<｜DSML｜invoke name=\"Read\">\n<｜DSML｜parameter name=\"path\" string=\"true\">a\"b</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>".as_bytes(),
    ];
    let (events, p) = run(cfg, chunks);
    let frags: Vec<(usize, &str)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolArguments { index, fragment } => Some((*index, fragment.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        frags,
        [
            (0, "{"),
            (0, "\"command\":\""),
            (0, "echo partial"),
            (0, " done"),
            (0, "\""),
            (0, "}"),
            (1, "{"),
            (1, "\"path\":\""),
            (1, "a\\\"b"),
            (1, "\""),
            (1, "}")
        ]
    );
    let starts: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolCallStart { .. }))
        .collect();
    assert_eq!(starts.len(), 2);
    assert!(p.block_closed());
    let full: String = frags.iter().filter(|f| f.0 == 1).map(|f| f.1).collect();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&full).unwrap(),
        serde_json::json!({"path": "a\"b"})
    );
}

/// spec §9: parameters without a `string` attribute stop live projection after the header.
#[test]
fn projection_stops_on_missing_string_attribute() {
    let cfg = StreamConfig {
        thinking: false,
        tools_active: true,
    };
    let text = "<｜DSML｜tool_calls><｜DSML｜invoke name=\"f\"><｜DSML｜parameter name=\"a\">x</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜tool_calls>";
    let (events, p) = run(cfg, &[text.as_bytes()]);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(p.projection_failed() && p.block_closed());
}

#[test]
fn tools_inactive_streams_dsml_as_text_and_whitespace_is_held_when_active() {
    let text = format!("Hi.{WEATHER_BLOCK} after");
    let (events, p) = run(
        StreamConfig {
            thinking: false,
            tools_active: false,
        },
        &bytewise(&text),
    );
    assert_eq!(collapse(&events), vec![StreamEvent::Content(text.clone())]);
    assert!(!p.block_started());

    let cfg = StreamConfig {
        thinking: false,
        tools_active: true,
    };
    let (events, p) = run(cfg, &bytewise(&format!("Hi.{WEATHER_BLOCK} after")));
    assert_eq!(collapse(&events)[0], StreamEvent::Content("Hi.".into()));
    assert!(
        !format!("{events:?}").contains("after"),
        "text after the closer is discarded"
    );
    assert!(p.suppressed_tail().starts_with(b"\n\n<"));
    // Whitespace that turns out to be text is released, an orphan closer stays text.
    let (events, _) = run(cfg, &bytewise("a  b </｜DSML｜tool_calls> <x> c "));
    assert_eq!(
        collapse(&events),
        vec![StreamEvent::Content(
            "a  b </｜DSML｜tool_calls> <x> c ".into()
        )]
    );
}

#[test]
fn unterminated_block_is_not_flushed_as_text() {
    let cfg = StreamConfig {
        thinking: false,
        tools_active: true,
    };
    let (events, p) = run(cfg, &[b"x <tool_calls><invoke name=\"f\">"]);
    assert!(p.block_started() && !p.block_closed());
    assert_eq!(events[0], StreamEvent::Content("x".into()));
    assert_eq!(p.suppressed_tail(), b" <tool_calls><invoke name=\"f\">");
    assert_eq!(p.raw(), b"x <tool_calls><invoke name=\"f\">");
}

proptest! {
    /// Any chunking gives the same collapsed events as one push, and text events never split a
    /// UTF-8 character (no U+FFFD from valid input).
    #[test]
    fn chunking_does_not_change_events(cuts in proptest::collection::vec(0usize..400, 0..12), which in 0usize..4) {
        let texts = [
            format!("<think>plän 😀 </think>Sure → ok.{WEATHER_BLOCK}"),
            format!("no think here 中文{WEATHER_BLOCK}"),
            "<think>a</think>b < c <tool_calls><invoke name=\"f\"><parameter name=\"k\" string=\"true\">v &amp; ü</parameter></invoke></tool_calls>".to_owned(),
            "<think>only reasoning with ｜DSML｜ and </thin".to_owned(),
        ];
        let text = texts[which].as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for c in cuts {
            chunks.push(&text[last..c]);
            last = c;
        }
        chunks.push(&text[last..]);
        for cfg in [TOOLS_THINKING, StreamConfig { thinking: false, tools_active: true }, StreamConfig { thinking: true, tools_active: false }] {
            let (whole, _) = run(cfg, &[text]);
            let (split, _) = run(cfg, &chunks);
            prop_assert_eq!(collapse(&split), collapse(&whole));
            let debug = format!("{:?}", split);
            prop_assert!(!debug.contains(char::REPLACEMENT_CHARACTER));
        }
    }
}

/// A long streamed parameter costs linear time: 256 KiB in 3-byte pushes (quadratic rescans
/// would take minutes here).
#[test]
fn long_parameter_streams_in_linear_time() {
    let body = "fn main() { println!(\"&lt;ok&gt;\"); }\n".repeat(256 * 1024 / 40);
    let text = format!("<｜DSML｜tool_calls><｜DSML｜invoke name=\"write\"><｜DSML｜parameter name=\"src\" string=\"true\">{body}</｜DSML｜parameter></｜DSML｜invoke></｜DSML｜tool_calls>");
    let start = std::time::Instant::now();
    let (events, p) = run(
        StreamConfig {
            thinking: false,
            tools_active: true,
        },
        &text.as_bytes().chunks(3).collect::<Vec<_>>(),
    );
    assert!(p.block_closed());
    let args: String = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ToolArguments { fragment, .. } => Some(fragment.as_str()),
            _ => None,
        })
        .collect();
    let v: serde_json::Value = serde_json::from_str(&args).unwrap();
    assert_eq!(
        v["src"].as_str().unwrap(),
        body.replace("&lt;", "<").replace("&gt;", ">")
    );
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}

/// Found by the `dsml_parse` fuzz target: a closer of another spelling inside a string body stops
/// the block, and the events must not depend on the push boundaries around it.
#[test]
fn foreign_closer_inside_a_body_stops_identically_for_any_chunking() {
    let text = "<｜DSML｜tool_calls><｜DSML｜invoke name=\"f\"><｜DSML｜parameter name=\"c\" string=\"true\">R</DSML｜tool_calls>｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let cfg = StreamConfig {
        thinking: false,
        tools_active: true,
    };
    let (whole, p) = run(cfg, &[text.as_bytes()]);
    assert!(p.block_closed());
    for n in 1..12 {
        let (split, _) = run(cfg, &text.as_bytes().chunks(n).collect::<Vec<_>>());
        assert_eq!(collapse(&split), collapse(&whole), "chunk {n}");
    }
}
