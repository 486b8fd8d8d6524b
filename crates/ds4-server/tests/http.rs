//! spec/server.md §8.2 server behaviours over real HTTP against an in-process server (fake
//! deterministic backend, real tokenizer and DSML code): routes, errors, SSE shapes, tool calls,
//! prefix reuse, stop sequences, auth, CORS.

mod common;

use common::*;
use ds4_server::ServerConfig;
use serde_json::{json, Value};

const WEATHER_DSML: &str = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Rome</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}])
}

// ---- routes and errors (§4.2, §4.13) ---------------------------------------------------------

#[test]
fn models_endpoints_and_unknown_routes() {
    let s = start(test_config());
    let r = request(s.addr, "GET", "/v1/models", &[], "");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["data"][0]["id"], "deepseek-v4-flash");
    assert_eq!(v["data"][0]["context_length"], 4096);
    assert_eq!(
        v["data"][0]["top_provider"]["max_completion_tokens"], 512,
        "min(-n, ctx)"
    );
    assert!(r.body.ends_with('\n'));
    assert_eq!(
        request(s.addr, "GET", "/v1/models/deepseek-v4-flash", &[], "").json()["object"],
        "model"
    );
    let r = request(s.addr, "GET", "/v1/models/other", &[], "");
    assert_eq!(r.status, 404);
    let r = request(s.addr, "GET", "/v2/nothing", &[], "");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"error": {"message": "unknown endpoint", "type": "invalid_request_error"}})
    );
    assert_eq!(
        request(s.addr, "GET", "/v1/chat/completions", &[], "").status,
        404
    );
}

#[test]
fn malformed_requests_get_400_in_the_right_shape() {
    let s = start(test_config());
    let bad = |path: &str, body: &str| request(s.addr, "POST", path, &[], body);
    for (path, body, msg) in [
        ("/v1/chat/completions", "{not json", "invalid JSON request"),
        ("/v1/chat/completions", "", "invalid JSON request"),
        ("/v1/chat/completions", "[1,2]", "invalid JSON request"),
        (
            "/v1/chat/completions",
            r#"{"messages":[],"temperature":"1"}"#,
            "invalid JSON request",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[],"stream":"true"}"#,
            "invalid JSON request",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[],"reasoning_effort":"huge"}"#,
            "invalid JSON request",
        ),
        (
            "/v1/chat/completions",
            r#"{"model":"x"}"#,
            "missing messages",
        ),
        ("/v1/completions", r#"{"model":"x"}"#, "missing prompt"),
        ("/v1/responses", r#"{"model":"x"}"#, "missing input"),
        (
            "/v1/responses",
            r#"{"input":"hi","previous_response_id":"resp_1"}"#,
            "previous_response_id is not supported; replay full input instead",
        ),
        (
            "/v1/responses",
            r#"{"input":"hi","tool_choice":"required"}"#,
            "tool_choice=required not supported",
        ),
        (
            "/v1/responses",
            r#"{"input":"hi","tool_choice":{"type":"function","name":"f"}}"#,
            "forced tool_choice not supported",
        ),
        (
            "/v1/responses",
            r#"{"input":[{"type":"input_image"}]}"#,
            "invalid JSON request",
        ),
        (
            "/v1/responses",
            r#"{"input":[{"type":"message","role":"user","content":"x","status":"in_progress"}]}"#,
            "invalid JSON request",
        ),
    ] {
        let r = bad(path, body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        assert_eq!(r.json()["error"]["message"], msg, "{path} {body}");
        assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    }
    let r = bad("/v1/messages", r#"{"max_tokens":5}"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["message"], "missing messages");
}

#[test]
fn json_nesting_limit_is_256() {
    let s = start(test_config());
    let nest = |d: usize| {
        format!(
            r#"{{"messages":[],"x":{}{}}}"#,
            "[".repeat(d - 1),
            "]".repeat(d - 1)
        )
    };
    // The object itself is level 1, so d-1 arrays make depth d.
    let r = request(
        s.addr,
        "POST",
        "/v1/chat/completions",
        &[("x-ds4-test-output", "ok")],
        &nest(257),
    );
    assert_eq!(r.status, 400);
    let r = request(s.addr, "POST", "/v1/chat/completions", &[], &nest(256));
    assert_ne!(
        r.json()["error"]["message"],
        "invalid JSON request",
        "depth 256 must parse: {}",
        r.body
    );
}

#[test]
fn context_overflow_reports_tokens_asked_and_allowed() {
    let s = start(ServerConfig {
        ctx: 32,
        ..test_config()
    });
    let long = "word ".repeat(100);
    let r = post(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": long}]}),
    );
    assert_eq!(r.status, 400);
    let e = &r.json()["error"];
    assert_eq!(e["code"], "context_length_exceeded");
    assert_eq!(e["param"], "messages");
    assert_eq!(e["n_ctx"], 32);
    let n = e["n_prompt_tokens"].as_u64().unwrap();
    assert!(n >= 32);
    assert_eq!(
        e["message"],
        format!("Prompt has {n} tokens, but the configured context size is 32 tokens")
    );
    let r = post(s.addr, "/v1/completions", &json!({"prompt": long}));
    assert_eq!(r.json()["error"]["param"], "prompt");
    let r = post(
        s.addr,
        "/v1/messages",
        &json!({"max_tokens": 4, "messages": [{"role": "user", "content": long}]}),
    );
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["n_ctx"], 32);
}

#[test]
fn oversized_body_is_413_with_configurable_limit() {
    let s = start(ServerConfig {
        max_body_bytes: 1000,
        ..test_config()
    });
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(2000)}]});
    let r = post(s.addr, "/v1/chat/completions", &big);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("1000"));
    let r = post(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn api_key_is_required_when_configured() {
    let s = start(ServerConfig {
        api_key: Some("sekret".into()),
        ..test_config()
    });
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).to_string();
    let r = request(s.addr, "POST", "/v1/chat/completions", &[], &body);
    assert_eq!(r.status, 401);
    let r = request(
        s.addr,
        "POST",
        "/v1/messages",
        &[("x-api-key", "wrong")],
        &body,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    let r = request(
        s.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sekret")],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = request(s.addr, "GET", "/v1/models", &[("x-api-key", "sekret")], "");
    assert_eq!(r.status, 200);
    // Health stays open for load balancers.
    assert_eq!(request(s.addr, "GET", "/health", &[], "").status, 200);
}

#[test]
fn cors_headers_are_opt_in() {
    let s = start(test_config());
    let r = request(s.addr, "GET", "/v1/models", &[], "");
    assert!(r.header("access-control-allow-origin").is_none());
    let r = request(s.addr, "OPTIONS", "/v1/chat/completions", &[], "");
    assert_eq!(r.status, 204);
    let s = start(ServerConfig {
        cors: true,
        ..test_config()
    });
    for r in [
        request(s.addr, "GET", "/v1/models", &[], ""),
        request(s.addr, "OPTIONS", "/anything", &[], ""),
        request(s.addr, "GET", "/nope", &[], ""),
        post(
            s.addr,
            "/v1/chat/completions",
            &json!({"messages": [], "stream": true, "max_tokens": 1}),
        ),
    ] {
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, POST, OPTIONS")
        );
        assert_eq!(r.header("access-control-allow-headers"), Some("*"));
    }
    let r = request(s.addr, "OPTIONS", "/v1/chat/completions", &[], "");
    assert_eq!(r.status, 204);
    assert!(r.header("content-type").is_none());
}

#[test]
fn health_and_metrics() {
    let s = start(test_config());
    assert_eq!(
        request(s.addr, "GET", "/health", &[], "").json()["status"],
        "ready"
    );
    post_forced(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
        "a</think>b",
    );
    let m = request(s.addr, "GET", "/metrics", &[], "");
    assert_eq!(m.status, 200);
    assert!(
        m.body
            .contains("ds4_requests_total{endpoint=\"chat_completions\"} 1"),
        "{}",
        m.body
    );
    assert!(m.body.contains("ds4_queue_depth 0"));
    assert!(m.body.contains("ds4_generated_tokens_total "));
    assert!(m.body.contains("ds4_prefill_tokens_per_second "));
}

// ---- chat completions (§4.6) -----------------------------------------------------------------

#[test]
fn chat_non_streaming_splits_reasoning_and_reports_usage() {
    let s = start(test_config());
    let r = post_forced(
        s.addr,
        "/v1/chat/completions",
        &json!({"model": "my-model", "messages": [{"role": "user", "content": "Hello"}]}),
        "Let me think.</think>Hi there!",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["model"], "my-model");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["content"], "Hi there!");
    assert_eq!(msg["reasoning_content"], "Let me think.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    let (p, c) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0);
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + c);
    assert_eq!(
        u["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            + u["prompt_tokens_details"]["cache_write_tokens"]
                .as_u64()
                .unwrap(),
        p
    );
}

#[test]
fn max_tokens_zero_and_length_finish() {
    let s = start(test_config());
    let body =
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0, "think": false});
    let v = post_forced(s.addr, "/v1/chat/completions", &body, "abc def").json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    let body =
        json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "think": false});
    let v = post_forced(
        s.addr,
        "/v1/chat/completions",
        &body,
        "one two three four five",
    )
    .json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 2);
}

#[test]
fn chat_stream_orders_role_reasoning_content_done() {
    let s = start(test_config());
    let body = json!({"messages": [{"role": "user", "content": "Hello"}], "stream": true,
        "stream_options": {"include_usage": true}});
    let r = post_forced(
        s.addr,
        "/v1/chat/completions",
        &body,
        "Thinking about it.</think>The answer is 42.",
    );
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let data = r.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant"})
    );
    let mut reasoning = String::new();
    let mut content = String::new();
    let mut seen_content = false;
    for c in &chunks[1..] {
        let d = &c["choices"][0]["delta"];
        if let Some(t) = d["reasoning_content"].as_str() {
            assert!(!seen_content, "reasoning after content");
            reasoning.push_str(t);
        }
        if let Some(t) = d["content"].as_str() {
            seen_content = true;
            content.push_str(t);
        }
    }
    assert_eq!(reasoning, "Thinking about it.");
    assert_eq!(content, "The answer is 42.");
    assert!(!r.body.contains("think>"), "think tags leaked");
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["prompt_tokens_details"]["cached_tokens"].is_u64());
}

#[test]
fn chat_tool_call_streams_live_and_parses() {
    let s = start(test_config());
    let body = json!({"messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": weather_tools(),
        "stream": true});
    let out = format!("Need the weather tool.</think>Let me check.{WEATHER_DSML}");
    let r = post_forced(s.addr, "/v1/chat/completions", &body, &out);
    let data = r.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let mut content = String::new();
    let mut args = String::new();
    let mut headers = Vec::new();
    for c in &chunks {
        let d = &c["choices"][0]["delta"];
        if let Some(t) = d["content"].as_str() {
            assert!(headers.is_empty(), "content after tool call");
            content.push_str(t);
        }
        if let Some(tc) = d["tool_calls"].as_array() {
            if let Some(id) = tc[0]["id"].as_str() {
                headers.push((id.to_string(), tc[0]["function"]["name"].clone()));
            }
            args.push_str(tc[0]["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(content, "Let me check.");
    assert_eq!(headers.len(), 1, "exactly one tool header");
    assert!(headers[0].0.starts_with("call_") && headers[0].0.len() == 37);
    assert_eq!(headers[0].1, "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Rome", "days": 2})
    );
    assert!(!r.body.contains("DSML"), "raw DSML leaked: {}", r.body);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls",
        "{}",
        r.body
    );

    // Non-streaming: compact arguments string in DSML order.
    let body = json!({"messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": weather_tools()});
    let v = post_forced(s.addr, "/v1/chat/completions", &body, &out).json();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["arguments"], r#"{"city":"Rome","days":2}"#);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["choices"][0]["message"]["content"], "Let me check.");
}

#[test]
fn unterminated_tool_call_finishes_with_error() {
    let s = start(test_config());
    let body = json!({"messages": [{"role": "user", "content": "x"}], "tools": weather_tools(), "think": false});
    let out = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n";
    let v = post_forced(s.addr, "/v1/chat/completions", &body, out).json();
    assert_eq!(v["choices"][0]["finish_reason"], "error");
}

#[test]
fn follow_up_turn_prefills_only_the_new_suffix() {
    let s = start(test_config());
    let first = json!({"messages": [{"role": "user", "content": "Tell me a story about a cat."}], "think": false});
    let v1 = post_forced(
        s.addr,
        "/v1/chat/completions",
        &first,
        "Once upon a time there was a cat.",
    )
    .json();
    let p1 = v1["usage"]["prompt_tokens"].as_u64().unwrap();
    let g1 = v1["usage"]["completion_tokens"].as_u64().unwrap();
    let second = json!({"think": false, "messages": [
        {"role": "user", "content": "Tell me a story about a cat."},
        {"role": "assistant", "content": v1["choices"][0]["message"]["content"]},
        {"role": "user", "content": "And then?"}]});
    let v2 = post_forced(s.addr, "/v1/chat/completions", &second, "It slept.").json();
    let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    // The live state holds the first prompt and every generated token (EOS is sampled but never
    // evaluated), so all of that is reused.
    assert_eq!(cached, p1 + g1, "{v2}");
    assert!(
        v2["usage"]["prompt_tokens_details"]["cache_write_tokens"]
            .as_u64()
            .unwrap()
            < 12
    );
}

#[test]
fn thinking_follow_up_continues_from_hidden_reasoning() {
    let s = start(test_config());
    let first = json!({"messages": [{"role": "user", "content": "What is 2+2?"}]});
    let v1 = post_forced(
        s.addr,
        "/v1/chat/completions",
        &first,
        "Simple arithmetic.</think>4",
    )
    .json();
    let p1 = v1["usage"]["prompt_tokens"].as_u64().unwrap();
    // The client replays only the visible answer; the renderer drops old reasoning.
    let second = json!({"messages": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"}]});
    let v2 = post_forced(s.addr, "/v1/chat/completions", &second, "Again.</think>6").json();
    let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    // spec §5.2 rule 6: the whole live state (prompt + hidden reasoning + answer) is reused; only
    // EOS and the new user turn are prefilled.
    let g1 = v1["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(cached, p1 + g1, "{v2}");
    let written = v2["usage"]["prompt_tokens_details"]["cache_write_tokens"]
        .as_u64()
        .unwrap();
    assert!(written < 16, "{v2}");
}

#[test]
fn tool_round_trip_replays_sampled_dsml_exactly() {
    let s = start(test_config());
    let first = json!({"messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": weather_tools()});
    let out = format!("Need it.</think>{WEATHER_DSML}");
    let v1 = post_forced(s.addr, "/v1/chat/completions", &first, &out).json();
    let call = v1["choices"][0]["message"]["tool_calls"][0].clone();
    let p1 = v1["usage"]["prompt_tokens"].as_u64().unwrap();
    let g1 = v1["usage"]["completion_tokens"].as_u64().unwrap();
    // The client sends the arguments back with another key order and spacing: exact replay must
    // still render the sampled bytes, so the whole live state is a prefix of the new prompt.
    let second = json!({"tools": weather_tools(), "messages": [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need it.",
            "tool_calls": [{"id": call["id"], "type": "function",
                "function": {"name": "get_weather", "arguments": "{ \"days\": 2, \"city\": \"Rome\" }"}}]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 24C"}]});
    let v2 = post_forced(
        s.addr,
        "/v1/chat/completions",
        &second,
        "Done.</think>It is sunny.",
    )
    .json();
    let cached = v2["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    // The live state ends with the block closer (spec §5.1); all of it is reused.
    assert_eq!(cached, p1 + g1, "{v2}");
    assert_eq!(v2["choices"][0]["message"]["content"], "It is sunny.");
}

#[test]
fn stop_sequences_truncate_and_invalidate_the_live_state() {
    let s = start(test_config());
    let body = json!({"messages": [{"role": "user", "content": "count"}], "think": false, "stop": ["four", "zzz"]});
    let v = post_forced(
        s.addr,
        "/v1/chat/completions",
        &body,
        "one two three four five six",
    )
    .json();
    assert_eq!(v["choices"][0]["message"]["content"], "one two three ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Streaming: the held-back bytes never leak the stop text.
    let body = json!({"messages": [{"role": "user", "content": "count"}], "think": false, "stop": "four", "stream": true});
    let r = post_forced(
        s.addr,
        "/v1/chat/completions",
        &body,
        "one two three four five six",
    );
    assert!(
        !r.body.contains("four") && !r.body.contains("five"),
        "{}",
        r.body
    );
    // The live state was invalidated: an identical prompt reuses nothing.
    let v = post_forced(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "count"}],
        "think": false}),
        "x",
    )
    .json();
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
}

#[test]
fn model_aliases_and_thinking_controls() {
    let s = start(test_config());
    let out = "plain answer";
    // deepseek-chat: non-thinking, so the whole output is content.
    let v = post_forced(s.addr, "/v1/chat/completions",
        &json!({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x"}], "reasoning_effort": "high"}), out).json();
    assert_eq!(v["choices"][0]["message"]["content"], out);
    assert!(v["choices"][0]["message"]
        .get("reasoning_content")
        .is_none());
    // Explicit thinking overrides the alias: the output streams as reasoning.
    let stream_kinds = |body: Value| -> Vec<String> {
        let r = post_forced(s.addr, "/v1/chat/completions", &body, "abc");
        r.sse_data()
            .iter()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]
                    .as_object()
                    .and_then(|d| d.keys().next().cloned())
            })
            .collect()
    };
    let kinds = stream_kinds(
        json!({"model": "deepseek-chat", "thinking": {"type": "enabled"}, "stream": true,
        "messages": [{"role": "user", "content": "x"}]}),
    );
    assert!(
        kinds.contains(&"reasoning_content".to_string()) && !kinds.contains(&"content".to_string()),
        "{kinds:?}"
    );
    let kinds = stream_kinds(
        json!({"thinking": {"type": "disabled", "budget_tokens": 10}, "stream": true,
        "messages": [{"role": "user", "content": "x"}]}),
    );
    assert!(
        kinds.contains(&"content".to_string()) && !kinds.contains(&"reasoning_content".to_string()),
        "{kinds:?}"
    );
    let kinds = stream_kinds(
        json!({"model": "deepseek-reasoner", "stream": true, "messages": [{"role": "user", "content": "x"}]}),
    );
    assert!(
        kinds.contains(&"reasoning_content".to_string()),
        "{kinds:?}"
    );
}

// ---- completions (§4.7) ----------------------------------------------------------------------

#[test]
fn completions_return_raw_text_including_think_close() {
    let s = start(test_config());
    let v = post_forced(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "Hi"}),
        "hmm</think>hello",
    )
    .json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["choices"][0]["text"], "hmm</think>hello");
    let r = post_forced(
        s.addr,
        "/v1/completions",
        &json!({"prompt": ["Hi", 3], "stream": true}),
        "abc",
    );
    let data = r.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(text, "abc");
}

// ---- responses (§4.8) ------------------------------------------------------------------------

#[test]
fn responses_stream_events_are_ordered_and_numbered() {
    let s = start(test_config());
    let body = json!({"input": "Weather?", "tools": [{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "reasoning": {"summary": "auto"}, "stream": true});
    let out = format!("Check.</think>On it.{WEATHER_DSML}");
    let r = post_forced(s.addr, "/v1/responses", &body, &out);
    let events: Vec<Value> = r
        .sse_data()
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i as u64);
    }
    let pos = |t: &str| {
        types
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("{t} missing: {}", r.body))
    };
    assert_eq!(types[0], "response.created");
    assert!(pos("response.reasoning_summary_text.delta") < pos("response.output_text.delta"));
    assert!(pos("response.output_text.delta") < pos("response.reasoning_summary_text.done"));
    assert!(pos("response.output_text.done") < pos("response.function_call_arguments.delta"));
    assert_eq!(*types.last().unwrap(), "response.completed", "{}", r.body);
    let resp = &events.last().unwrap()["response"];
    let items = resp["output"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning", "message", "function_call"]);
    assert_eq!(items[2]["arguments"], r#"{"city":"Rome","days":2}"#);
    assert!(items[2]["call_id"].as_str().unwrap().starts_with("call_"));
    assert!(resp["usage"]["input_tokens_details"]["cached_tokens"].is_u64());
}

#[test]
fn responses_non_streaming_and_tool_output_validation() {
    let s = start(test_config());
    let v = post_forced(
        s.addr,
        "/v1/responses",
        &json!({"input": "hi", "max_output_tokens": 2}),
        "a b c d",
    )
    .json();
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_tokens");
    let r = post(
        s.addr,
        "/v1/responses",
        &json!({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("call_id call_x"));
    let ok = json!({"input": [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]},
        {"type": "function_call", "call_id": "call_x", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_x", "output": "1"}]});
    let v = post_forced(s.addr, "/v1/responses", &ok, "x</think>done").json();
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["text"], "done");
}

// ---- anthropic (§4.9) ------------------------------------------------------------------------

#[test]
fn anthropic_stream_sends_thinking_text_and_live_tool_use() {
    let s = start(test_config());
    let body = json!({"max_tokens": 100, "stream": true, "system": [{"type": "text", "text": "be brief"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather?"}]}]});
    let out = format!("Need the weather tool.</think>Let me check.{WEATHER_DSML}");
    let r = post_forced(s.addr, "/v1/messages", &body, &out);
    let ev = r.sse_named();
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(*names.last().unwrap(), "message_stop");
    let starts: Vec<&Value> = ev
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| &d["content_block"])
        .collect();
    let kinds: Vec<&str> = starts.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["thinking", "text", "tool_use"]);
    assert!(starts[2]["id"].as_str().unwrap().starts_with("toolu_"));
    let sig = ev
        .iter()
        .position(|(_, d)| d["delta"]["type"] == "signature_delta")
        .unwrap();
    let first_text = ev
        .iter()
        .position(|(_, d)| d["delta"]["type"] == "text_delta")
        .unwrap();
    assert!(sig < first_text);
    let json_args: String = ev
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
        .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json_args).unwrap(),
        json!({"city": "Rome", "days": 2})
    );
    let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert!(!r.body.contains("DSML"));
    let start = &ev[0].1["message"]["usage"];
    assert_eq!(start["input_tokens"], 0);
}

#[test]
fn anthropic_non_streaming_blocks_and_tool_result_ids() {
    let s = start(test_config());
    let body = json!({"max_tokens": 100, "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Weather?"}]});
    let out = format!("Hmm.</think>Checking.{WEATHER_DSML}");
    let v = post_forced(s.addr, "/v1/messages", &body, &out).json();
    let kinds: Vec<&str> = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["thinking", "text", "tool_use"]);
    assert_eq!(v["content"][2]["input"], json!({"city": "Rome", "days": 2}));
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(v["stop_sequence"], Value::Null);
    let id = v["content"][2]["id"].as_str().unwrap().to_string();
    // Unknown tool_use_id: 400 in the Anthropic shape.
    let bad = json!({"max_tokens": 10, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]}]});
    let r = post(s.addr, "/v1/messages", &bad);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["type"], "error");
    // Replayed history (content before role is fine) continues from the live state.
    let next = json!({"max_tokens": 10, "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"content": [{"type": "thinking", "thinking": "Hmm.", "signature": "x"}, {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": id, "name": "get_weather", "input": {"days": 2, "city": "Rome"}}], "role": "assistant"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": [{"type": "text", "text": "Sunny"}]}]}]});
    let v2 = post_forced(s.addr, "/v1/messages", &next, "ok</think>Sunny.").json();
    assert_eq!(
        v2["content"].as_array().unwrap().last().unwrap()["text"],
        "Sunny."
    );
    assert!(
        v2["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 0,
        "{v2}"
    );
}

// ---- live protocol bindings (§5.2 rules 1-4, §5.3) -------------------------------------------

/// The `cache_source` lines of a trace, in request order.
fn cache_sources(trace: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("cache_source: "))
        .map(str::to_string)
        .collect()
}

fn responses_tools() -> Value {
    json!([{"type": "function", "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}])
}

/// (input, cached, written, output) tokens of a Responses usage.
fn r_usage(v: &Value) -> (u64, u64, u64, u64) {
    let u = &v["usage"];
    (
        u["input_tokens"].as_u64().unwrap(),
        u["input_tokens_details"]["cached_tokens"].as_u64().unwrap(),
        u["input_tokens_details"]["cache_write_tokens"]
            .as_u64()
            .unwrap(),
        u["output_tokens"].as_u64().unwrap(),
    )
}

#[test]
fn responses_tool_round_trip_prefills_only_the_new_tail() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let s = start_traced(test_config(), std::time::Duration::ZERO, &trace);
    let first = json!({"input": "Weather in Rome?", "tools": responses_tools()});
    // Thinking (the default) without summaries: the client never sees the reasoning, so its replay
    // renders `<think></think>` where the live KV holds the sampled reasoning.
    let v1 = post_forced(
        s.addr,
        "/v1/responses",
        &first,
        &format!("Rome needs a lookup.</think>{WEATHER_DSML}"),
    )
    .json();
    let (p1, c1, _, g1) = r_usage(&v1);
    assert_eq!(c1, 0);
    let call = v1["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .unwrap()
        .clone();
    let call_id = call["call_id"].as_str().unwrap();
    // Full replay, arguments in another key order: rule 1 (visible prefix) continues the live KV.
    let second = json!({"tools": responses_tools(), "input": [
        {"type": "message", "role": "user", "content": "Weather in Rome?"},
        {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": "{\"days\":2,\"city\":\"Rome\"}"},
        {"type": "function_call_output", "call_id": call_id, "output": "Sunny, 24C"}]});
    let v2 = post_forced(
        s.addr,
        "/v1/responses",
        &second,
        "Done.</think>It is sunny.",
    )
    .json();
    let (p2, c2, w2, _) = r_usage(&v2);
    assert_eq!(c2, p1 + g1, "the whole first turn is reused: {v2}");
    assert_eq!(p2, c2 + w2);
    // EOS + USER + the tool result + ASSISTANT + <think>.
    assert!(w2 < 20, "only the new tail is prefilled: {v2}");
    assert_eq!(v2["output"][0]["content"][0]["text"], "It is sunny.");
    assert_eq!(
        cache_sources(&trace),
        ["none", "responses-visible"],
        "{}",
        std::fs::read_to_string(&trace).unwrap()
    );
}

#[test]
fn responses_tool_output_only_request_continues_live_state_or_gets_409() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    // A slow model, so a request can be parsed while the live state it needs is still there and
    // executed after another request replaced it.
    let s = start_traced(test_config(), std::time::Duration::from_millis(2), &trace);
    let turn = |s: &TestServer| {
        let v = post_forced(
            s.addr,
            "/v1/responses",
            &json!({"input": "Weather in Rome?", "tools": responses_tools()}),
            &format!("Lookup.</think>{WEATHER_DSML}"),
        )
        .json();
        let (p, _, _, g) = r_usage(&v);
        let id = v["output"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|i| i["call_id"].as_str())
            .unwrap()
            .to_string();
        (p + g, id)
    };
    let output_only = |id: &str| {
        json!({"tools": responses_tools(), "input": [
            {"type": "function_call_output", "call_id": id, "output": "Sunny"}]})
    };
    // Rule 2: only the tool output is sent; the live binding knows the call.
    let (live, id) = turn(&s);
    let v = post_forced(
        s.addr,
        "/v1/responses",
        &output_only(&id),
        "x</think>Sunny.",
    )
    .json();
    let (_, cached, written, _) = r_usage(&v);
    assert_eq!(cached, live, "{v}");
    assert!(written < 16, "{v}");
    assert_eq!(
        cache_sources(&trace).last().unwrap(),
        "responses-tool-output"
    );

    // Rule 4: another request runs first and takes the live state: 409.
    let (_, id) = turn(&s);
    let addr = s.addr;
    let chats_before = chat_requests(&s);
    let long: String = (0..800).map(|i| format!("w{i} ")).collect();
    let other = std::thread::spawn(move || {
        post_forced(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": long}], "think": false}),
            "ok",
        )
    });
    wait_for_chat_request(&s, chats_before);
    let r = post_forced(s.addr, "/v1/responses", &output_only(&id), "x</think>y");
    assert_eq!(other.join().unwrap().status, 200);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(
        r.json()["error"]["message"],
        "Responses continuation state is not available; retry by replaying the full input history"
    );
    // Now the id is unknown at parse time: 400.
    let r = post(s.addr, "/v1/responses", &output_only(&id));
    assert_eq!(r.status, 400);
}

fn chat_requests(s: &TestServer) -> u64 {
    s.state.metrics.requests[0].load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until another chat request reached its handler (it is queued right after parsing), so
/// a request sent now runs after it while that one is still prefilling (a second or more on the
/// slow fake model).
fn wait_for_chat_request(s: &TestServer, before: u64) {
    let t = std::time::Instant::now();
    while chat_requests(s) == before {
        assert!(
            t.elapsed().as_secs() < 20,
            "the other request never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(50));
}

fn anthropic_tools() -> Value {
    json!([{"name": "get_weather", "input_schema": {"type": "object"}}])
}

#[test]
fn anthropic_tool_round_trip_prefills_only_the_new_tail() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let s = start_traced(test_config(), std::time::Duration::ZERO, &trace);
    let first = json!({"max_tokens": 100, "tools": anthropic_tools(),
        "messages": [{"role": "user", "content": "Weather?"}]});
    let v1 = post_forced(
        s.addr,
        "/v1/messages",
        &first,
        &format!("Hmm.</think>Checking.{WEATHER_DSML}"),
    )
    .json();
    let u1 = &v1["usage"];
    let p1 = u1["cache_read_input_tokens"].as_u64().unwrap()
        + u1["cache_creation_input_tokens"].as_u64().unwrap();
    let g1 = u1["output_tokens"].as_u64().unwrap();
    let id = v1["content"][2]["id"].as_str().unwrap();
    // The client drops the thinking block (the replay renders `<think></think>`), so neither the
    // tokens nor the text of the live state prefix the new prompt; the tool_result ids do.
    let second = json!({"max_tokens": 10, "tools": anthropic_tools(), "system": "be brief", "messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": id, "name": "get_weather", "input": {"days": 2, "city": "Rome"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "Sunny"}]}]});
    let v2 = post_forced(s.addr, "/v1/messages", &second, "ok</think>Sunny.").json();
    let u2 = &v2["usage"];
    assert_eq!(u2["cache_read_input_tokens"], p1 + g1, "{v2}");
    assert!(
        u2["cache_creation_input_tokens"].as_u64().unwrap() < 20,
        "{v2}"
    );
    assert_eq!(u2["input_tokens"], 0);
    assert_eq!(
        cache_sources(&trace),
        ["none", "anthropic-tool-output"],
        "{}",
        std::fs::read_to_string(&trace).unwrap()
    );

    // A tool-result-only request answering the new live call works too (rule 3), and after
    // another request took the live state its id is unknown: 400.
    let v3 = post_forced(
        s.addr,
        "/v1/messages",
        &first,
        &format!("Hmm.</think>Checking.{WEATHER_DSML}"),
    )
    .json();
    let id3 = v3["content"][2]["id"].as_str().unwrap();
    let only = json!({"max_tokens": 10, "tools": anthropic_tools(), "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id3, "content": "Rain"}]}]});
    let v4 = post_forced(s.addr, "/v1/messages", &only, "ok</think>Rain.").json();
    assert!(
        v4["usage"]["cache_read_input_tokens"].as_u64().unwrap() > p1,
        "{v4}"
    );
    assert_eq!(
        v4["content"].as_array().unwrap().last().unwrap()["text"],
        "Rain."
    );
    let r = post(s.addr, "/v1/messages", &only);
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["type"], "error");
}

#[test]
fn anthropic_tool_result_only_request_gets_409_when_live_state_is_gone() {
    let s = start_with_delay(test_config(), std::time::Duration::from_millis(2));
    let v = post_forced(
        s.addr,
        "/v1/messages",
        &json!({"max_tokens": 100, "tools": anthropic_tools(),
            "messages": [{"role": "user", "content": "Weather?"}]}),
        &format!("Hmm.</think>{WEATHER_DSML}"),
    )
    .json();
    let id = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|b| b["id"].as_str())
        .unwrap()
        .to_string();
    let addr = s.addr;
    let chats_before = chat_requests(&s);
    let long: String = (0..800).map(|i| format!("w{i} ")).collect();
    let other = std::thread::spawn(move || {
        post_forced(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": long}], "think": false}),
            "ok",
        )
    });
    wait_for_chat_request(&s, chats_before);
    let only = json!({"max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "Rain"}]}]});
    let r = post_forced(s.addr, "/v1/messages", &only, "x");
    assert_eq!(other.join().unwrap().status, 200);
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(
        r.json()["error"]["message"],
        "Anthropic continuation state is not available; retry by replaying the full messages history"
    );
}

// ---- canonicalization fallback (§3.6) --------------------------------------------------------

#[test]
fn canonicalization_rewrites_the_live_tail_when_exact_replay_is_off() {
    // A sampled block the canonical renderer would write differently (spacing in a JSON value).
    let sampled = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Rome</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\"> 2 </｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let follow_up = |s: &TestServer| {
        let first = json!({"messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": weather_tools()});
        let v1 = post_forced(
            s.addr,
            "/v1/chat/completions",
            &first,
            &format!("Need it.</think>{sampled}"),
        )
        .json();
        let call = v1["choices"][0]["message"]["tool_calls"][0].clone();
        let second = json!({"tools": weather_tools(), "messages": [
            {"role": "user", "content": "Weather in Rome?"},
            {"role": "assistant", "content": "", "reasoning_content": "Need it.", "tool_calls": [call.clone()]},
            {"role": "tool", "tool_call_id": call["id"], "content": "Sunny"}]});
        let v2 = post_forced(s.addr, "/v1/chat/completions", &second, "ok</think>Sunny.").json();
        let u = &v2["usage"];
        (
            v1["usage"]["prompt_tokens"].as_u64().unwrap(),
            u["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
            u["prompt_tokens_details"]["cache_write_tokens"]
                .as_u64()
                .unwrap(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let off = ServerConfig {
        exact_replay: false,
        ..test_config()
    };
    let s = start_traced(off, std::time::Duration::ZERO, &trace);
    let (p1, cached, written) = follow_up(&s);
    // The live tail was rewritten to the canonical block before the response went out, so the
    // canonically rendered follow-up reuses everything up to the new turn.
    assert!(cached > p1, "cached {cached}, first prompt {p1}");
    assert!(written < 16, "written {written}");
    let text = std::fs::read_to_string(&trace).unwrap();
    assert!(
        text.contains("canonicalize: rewrote the live tail"),
        "{text}"
    );
    assert!(
        text.contains("tool_replay: mem=0 disk=0 canonical=1"),
        "{text}"
    );
    // With exact replay on, the sampled bytes are replayed and no rewrite is needed.
    let s = start(test_config());
    let (p1, cached, written) = follow_up(&s);
    assert!(cached > p1 && written < 16);
}

// ---- trace (§4.14) ---------------------------------------------------------------------------

#[test]
fn trace_records_header_cache_decision_prompt_generation_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let s = start_traced(test_config(), std::time::Duration::ZERO, &trace);
    let first = json!({"model": "m1", "messages": [{"role": "user", "content": "Weather in Rome?"}],
        "tools": weather_tools(), "temperature": 0.5});
    let out = format!("Need it.</think>{WEATHER_DSML}");
    let v1 = post_forced(s.addr, "/v1/chat/completions", &first, &out).json();
    let call = v1["choices"][0]["message"]["tool_calls"][0].clone();
    let second = json!({"tools": weather_tools(), "stream": true, "messages": [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need it.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": v1["choices"][0]["message"]["tool_calls"][0]["id"], "content": "Sunny"}]});
    post_forced(s.addr, "/v1/chat/completions", &second, "ok</think>Sunny.");
    // A different, longer conversation: a token mismatch with a window around it.
    let long = "Something else entirely. ".repeat(200);
    post_forced(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": long}], "think": false}),
        "fine",
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let records: Vec<&str> = text.split("===== request ").skip(1).collect();
    assert_eq!(records.len(), 3, "{text}");
    let r1 = records[0];
    for field in [
        "kind: chat\n",
        "model: m1\n",
        "stream: false\n",
        "tools: 1\n",
        "think_mode: high\n",
        "prompt_tokens: ",
        "effective_tokens: ",
        "cached_tokens: 0\n",
        "sampling: temperature=",
        "--- cache decision ---\n",
        "live_tokens: 0\n",
        "common_prefix: 0\n",
        "miss_reason: no-live-checkpoint\n",
        "tool_replay: mem=0 disk=0 canonical=0 missing_ids=0\n",
        "cache_source: none\n",
        "--- request json ---\n",
        "\"model\":\"m1\"",
        "--- rendered prompt ---\n<｜begin▁of▁sentence｜>## Tools",
        "--- generated ---\nNeed it.</think>",
        "--- parsed ---\nfinish: tool_calls\n",
        "tool_calls: 1\n",
        "get_weather {\"city\":\"Rome\",\"days\":2}",
    ] {
        assert!(r1.contains(field), "request 1 lacks {field:?}:\n{r1}");
    }
    assert!(r1.starts_with("1 "), "{r1}");
    let date = r1.split_whitespace().nth(1).unwrap();
    assert_eq!(date.len(), 10, "YYYY-MM-DD: {date}");
    let r2 = records[1];
    for field in [
        "stream: true\n",
        "tool_replay: mem=1 disk=0 canonical=0 missing_ids=0\n",
        "cache_source: memory-token\n",
        "finish: stop\n",
        "content: \"Sunny.\"",
    ] {
        assert!(r2.contains(field), "request 2 lacks {field:?}:\n{r2}");
    }
    let r3 = records[2];
    for field in [
        "miss_reason: token-mismatch\n",
        "mismatch_window: token ",
        "  live:   [",
        "  prompt: [",
        "think_mode: none\n",
    ] {
        assert!(r3.contains(field), "request 3 lacks {field:?}:\n{r3}");
    }
}

/// spec §8.2 #56: with reasoning summaries on, a tool turn's visible suffix includes the
/// reasoning the client saw (and replays as a `reasoning` item).
#[test]
fn responses_visible_prefix_includes_the_summary_of_a_tool_turn() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let s = start_traced(test_config(), std::time::Duration::ZERO, &trace);
    let first = json!({"input": "Weather in Rome?", "tools": responses_tools(),
        "reasoning": {"summary": "auto"}});
    let v1 = post_forced(
        s.addr,
        "/v1/responses",
        &first,
        &format!("Rome needs a lookup.</think>{WEATHER_DSML}"),
    )
    .json();
    let (p1, _, _, g1) = r_usage(&v1);
    let items = v1["output"].as_array().unwrap();
    assert_eq!(items[0]["type"], "reasoning");
    let summary = items[0]["summary"][0]["text"].as_str().unwrap();
    let call_id = items[1]["call_id"].as_str().unwrap();
    let second = json!({"tools": responses_tools(), "reasoning": {"summary": "auto"}, "input": [
        {"type": "message", "role": "user", "content": "Weather in Rome?"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": summary}]},
        {"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": "{\"city\":\"Rome\",\"days\":2}"},
        {"type": "function_call_output", "call_id": call_id, "output": "Sunny"}]});
    let v2 = post_forced(s.addr, "/v1/responses", &second, "ok</think>Sunny.").json();
    let (_, c2, w2, _) = r_usage(&v2);
    assert_eq!(c2, p1 + g1, "{v2}");
    assert!(w2 < 20, "{v2}");
    assert_eq!(
        cache_sources(&trace).last().map(String::as_str),
        Some("responses-visible")
    );
}

/// spec §4.8.4 / §8.2 #55: a replayed call without reasoning in thinking mode is
/// reasoning-sensitive: traced as a warning when no live state kept the reasoning.
#[test]
fn responses_replay_without_reasoning_is_flagged_in_the_trace() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.txt");
    let s = start_traced(test_config(), std::time::Duration::ZERO, &trace);
    let input = |with_reasoning: bool| {
        let mut items = vec![json!({"type": "message", "role": "user", "content": "go"})];
        if with_reasoning {
            items.push(
                json!({"type": "reasoning", "summary": [{"type": "summary_text", "text": "plan"}]}),
            );
        }
        items.push(
            json!({"type": "function_call", "call_id": "call_x", "name": "f", "arguments": "{}"}),
        );
        items.push(json!({"type": "function_call_output", "call_id": "call_x", "output": "1"}));
        json!({"input": items})
    };
    let warned = || {
        std::fs::read_to_string(&trace)
            .unwrap()
            .matches("warning: replayed tool call without reasoning")
            .count()
    };
    post_forced(s.addr, "/v1/responses", &input(true), "x</think>done");
    assert_eq!(warned(), 0);
    post_forced(s.addr, "/v1/responses", &input(false), "x</think>done");
    assert_eq!(warned(), 1);
    // Non-thinking: reasoning does not matter.
    let mut body = input(false);
    body["reasoning"] = json!({"effort": "none"});
    post_forced(s.addr, "/v1/responses", &body, "done");
    assert_eq!(warned(), 1);
}
