//! DSML parser, stream parser and tracker on arbitrary generations.
//!
//! Invariants: nothing panics; a successful parse's `raw_dsml` is a slice of the input and its
//! compact arguments are valid JSON; the stream parser gives the same (collapsed) events whatever
//! the chunking; text events never contain bytes of a closed block.
#![no_main]

use ds4_chat::dsml::{
    parse_generated_message, DsmlTracker, StreamConfig, StreamEvent, StreamParser,
};
use libfuzzer_sys::fuzz_target;

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

fn stream(cfg: StreamConfig, chunks: &[&[u8]]) -> (Vec<StreamEvent>, bool) {
    let mut p = StreamParser::new(cfg);
    let mut out = Vec::new();
    for c in chunks {
        p.push(c, &mut out);
    }
    p.finish(&mut out);
    (collapse(&out), p.block_closed())
}

fuzz_target!(|data: &[u8]| {
    // First byte: chunk size for the streaming comparison; rest: the generation.
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(body);
    for thinking in [false, true] {
        let p = parse_generated_message(&text, thinking);
        if p.error.is_none() {
            if let Some(raw) = &p.raw_dsml {
                assert!(text.contains(raw.as_str()));
                for call in &p.tool_calls {
                    let compact = call.compact_arguments();
                    assert!(
                        serde_json::from_str::<serde_json::Value>(&compact).is_ok(),
                        "{compact}"
                    );
                }
            } else {
                assert!(p.tool_calls.is_empty());
            }
        } else {
            assert_eq!(p.content, text);
        }
    }
    let chunk = usize::from(chunk % 16) + 1;
    let chunks: Vec<&[u8]> = body.chunks(chunk).collect();
    for cfg in [
        StreamConfig {
            thinking: true,
            tools_active: true,
        },
        StreamConfig {
            thinking: false,
            tools_active: true,
        },
        StreamConfig {
            thinking: true,
            tools_active: false,
        },
    ] {
        let (whole, closed_whole) = stream(cfg, &[body]);
        let (split, closed_split) = stream(cfg, &chunks);
        assert_eq!(whole, split);
        assert_eq!(closed_whole, closed_split);
    }
    let mut tracker = DsmlTracker::new();
    for c in &chunks {
        tracker.push(c);
        let _ = tracker.is_dsml_syntax();
    }
});
