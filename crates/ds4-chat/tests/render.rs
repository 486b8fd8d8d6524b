//! spec/server.md §2.7, §2.8, §2.9 worked examples and the §8.2 rendering behaviours, byte for
//! byte against the golden renderings (produced by the original's own request parsers).

mod common;

use common::golden_case;
use ds4_chat::dsml::{parse_generated_message, turn_suffix, wrap_tool_result};
use ds4_chat::{
    render_chat, render_completion, Message, Role, ThinkMode, Tokenizer, ToolCall, THINK_MAX_PREFIX,
};

const WEATHER_SCHEMA: &str = r#"{"name":"get_weather","description":"Get the weather for a city.","parameters":{"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},"required":["city"]}}"#;

fn msg(role: Role, content: &str) -> Message {
    Message::new(role, content)
}

fn assistant(content: &str, reasoning: &str, calls: Vec<ToolCall>) -> Message {
    Message {
        reasoning: reasoning.into(),
        tool_calls: calls,
        ..msg(Role::Assistant, content)
    }
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

/// Rendered text equals the golden text, and structural tokenization equals ds4's ids.
fn assert_golden(name: &str, messages: &[Message], schemas: &[String], think: ThinkMode) {
    let (text, ids) = golden_case(name);
    let r = render_chat(messages, schemas, think);
    assert_eq!(r.text(), text, "{name}: text");
    assert_eq!(Tokenizer::builtin().encode_segments(&r), ids, "{name}: ids");
}

fn request_a() -> Vec<Message> {
    vec![
        msg(Role::System, "You are terse."),
        msg(Role::User, "Weather in Rome for 2 days?"),
    ]
}

fn request_b() -> Vec<Message> {
    let mut m = request_a();
    m.push(assistant(
        "",
        "Need the weather tool.",
        vec![call(
            "call_abc",
            "get_weather",
            r#"{"city":"Rome","days":2}"#,
        )],
    ));
    m.push(Message {
        tool_call_id: Some("call_abc".into()),
        ..msg(Role::Tool, r#"{"temp_c":21,"sky":"sunny"}"#)
    });
    m.push(assistant("Sunny, about 21C.", "Summarize.", vec![]));
    m.push(msg(Role::User, "Thanks! And Paris?"));
    m
}

#[test]
fn spec_2_7_prompt_a_and_b() {
    let schemas = vec![WEATHER_SCHEMA.to_owned()];
    assert_golden(
        "render_2_7_prompt_a",
        &request_a(),
        &schemas,
        ThinkMode::High,
    );
    assert_golden(
        "render_2_7_prompt_b",
        &request_b(),
        &schemas,
        ThinkMode::High,
    );
}

/// §2.7 observation (1): prompt A + the sampled output is a byte prefix of prompt B, and the
/// intermediate request (only the tool result) renders as B truncated after
/// `</tool_result><｜Assistant｜><think>`.
#[test]
fn spec_2_7_generation_and_replay_form_a_prefix() {
    let schemas = vec![WEATHER_SCHEMA.to_owned()];
    let a = render_chat(&request_a(), &schemas, ThinkMode::High).text();
    let output = "Need the weather tool.</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n<｜DSML｜parameter name=\"city\" string=\"true\">Rome</｜DSML｜parameter>\n<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>";
    let parsed = parse_generated_message(output, true);
    assert_eq!(parsed.content, "");
    assert_eq!(parsed.reasoning.as_deref(), Some("Need the weather tool."));
    assert_eq!(parsed.tool_calls.len(), 1);
    assert_eq!(
        parsed.tool_calls[0].compact_arguments(),
        r#"{"city":"Rome","days":2}"#
    );
    let raw = parsed.raw_dsml.clone().unwrap();
    assert!(raw.starts_with("\n\n<｜DSML｜tool_calls>"));

    let b = render_chat(&request_b(), &schemas, ThinkMode::High).text();
    assert!(b.starts_with(&format!("{a}{output}")));

    // With exact replay the message carries the sampled block; same bytes here.
    let mut replayed = request_b();
    replayed[2].raw_dsml = Some(raw);
    assert_eq!(render_chat(&replayed, &schemas, ThinkMode::High).text(), b);

    let mut mid = request_b();
    mid.truncate(4);
    let mid_text = render_chat(&mid, &schemas, ThinkMode::High).text();
    let cut = b.find("</tool_result><｜Assistant｜><think>").unwrap()
        + "</tool_result><｜Assistant｜><think>".len();
    assert_eq!(mid_text, b[..cut]);
}

fn hi_bye() -> Vec<Message> {
    vec![
        msg(Role::User, "Hi"),
        assistant("Hello!", "greet", vec![]),
        msg(Role::User, "Bye"),
    ]
}

#[test]
fn spec_2_8_thinking_modes() {
    assert_golden("render_2_8_none", &hi_bye(), &[], ThinkMode::None);
    assert_golden("render_2_8_high", &hi_bye(), &[], ThinkMode::High);
    assert_golden("render_2_8_max", &hi_bye(), &[], ThinkMode::Max);
    let max = render_chat(&hi_bye(), &[], ThinkMode::Max).text();
    assert!(max.starts_with(&format!(
        "<｜begin▁of▁sentence｜>{THINK_MAX_PREFIX}<｜User｜>"
    )));
}

#[test]
fn spec_2_8_canonical_dsml_two_calls() {
    let messages = vec![
        msg(Role::User, "x"),
        assistant(
            "Checking.",
            "",
            vec![
                call("c1", "read", r#"{"path":"a.c"}"#),
                call(
                    "c2",
                    "bash",
                    r#"{"cmd":"ls </｜DSML｜parameter> && echo","opts":{ "a" : [1, 2] }}"#,
                ),
            ],
        ),
        msg(Role::Tool, "int main(){}\n</tool_result>x"),
        msg(Role::Tool, "a.cb.c"),
    ];
    assert_golden("render_2_8_dsml_two_calls", &messages, &[], ThinkMode::None);
}

#[test]
fn spec_2_8_anthropic_tail() {
    let schema = r#"{"name":"Bash","description":"Run","input_schema":{"type":"object","properties":{"command":{"type":"string"}}}}"#;
    let messages = vec![
        msg(Role::System, "You are Claude Code.\nBe brief."),
        msg(Role::User, "List files"),
        assistant(
            "Sure.",
            "use bash",
            vec![call("toolu_1", "Bash", r#"{"command":"ls"}"#)],
        ),
        msg(Role::User, &(wrap_tool_result("a\nb") + "now summarize")),
    ];
    let (tail, _) = golden_case("render_2_8_anthropic_tail");
    let tail = tail.strip_prefix('…').unwrap();
    let text = render_chat(&messages, &[schema.to_owned()], ThinkMode::High).text();
    assert!(text.ends_with(tail), "{text}");
}

#[test]
fn spec_2_8_responses_tail() {
    let messages = vec![
        msg(Role::System, "INSTRUCTIONS"),
        msg(Role::User, "run ls"),
        assistant(
            "",
            "need shell",
            vec![call("call_1", "shell", r#"{"cmd":["ls"]}"#)],
        ),
        Message {
            tool_call_id: Some("call_1".into()),
            ..msg(Role::Tool, "a.c")
        },
    ];
    let (tail, _) = golden_case("render_2_8_responses_tail");
    let text = render_chat(&messages, &["{}".to_owned()], ThinkMode::High).text();
    assert!(text.ends_with(&format!("schemas.\n\n{tail}")), "{text}");
}

#[test]
fn spec_2_9_completions() {
    let (text, ids) = golden_case("render_2_9_completions");
    let r = render_completion("Once upon a time", ThinkMode::High);
    assert_eq!(r.text(), text);
    assert_eq!(Tokenizer::builtin().encode_segments(&r), ids);
}

// ---- spec §8.2 rendering behaviours ---------------------------------------------------------

/// #4 render_think_max_prompt_prefix
#[test]
fn render_think_max_prompt_prefix() {
    let m = [
        msg(Role::System, "You are terse."),
        msg(Role::User, "Hello"),
    ];
    let t = render_chat(&m, &[], ThinkMode::Max.effective(393216)).text();
    assert_eq!(t, format!("<｜begin▁of▁sentence｜>{THINK_MAX_PREFIX}You are terse.<｜User｜>Hello<｜Assistant｜><think>"));
    assert!(!t.contains("</think>"));
    // §2.1: below 393216 tokens of context Max silently becomes High.
    assert_eq!(ThinkMode::Max.effective(32768), ThinkMode::High);
    let t = render_chat(&m, &[], ThinkMode::Max.effective(32768)).text();
    assert!(!t.contains("Reasoning Effort"));
}

/// #5 render_non_thinking_prompt_closes_think
#[test]
fn render_non_thinking_prompt_closes_think() {
    let t = render_chat(&[msg(Role::User, "Hello")], &[], ThinkMode::None).text();
    assert_eq!(
        t,
        "<｜begin▁of▁sentence｜><｜User｜>Hello<｜Assistant｜></think>"
    );
}

/// #6 render_drops_old_reasoning_without_tools
#[test]
fn render_drops_old_reasoning_without_tools() {
    let m = [
        msg(Role::User, "q1"),
        assistant("first answer", "old reasoning", vec![]),
        msg(Role::User, "q2"),
    ];
    let t = render_chat(&m, &[], ThinkMode::High).text();
    assert!(!t.contains("old reasoning"));
    assert!(t.contains("<｜Assistant｜></think>first answer"));
    assert!(t.ends_with("<｜User｜>q2<｜Assistant｜><think>"));
    // A trailing assistant after the last user keeps its reasoning (index > last_user_idx).
    let m = [msg(Role::User, "q1"), assistant("a", "kept", vec![])];
    assert!(render_chat(&m, &[], ThinkMode::High)
        .text()
        .ends_with("<think>kept</think>a<｜end▁of▁sentence｜>"));
}

/// #7 render_preserves_reasoning_with_tools
#[test]
fn render_preserves_reasoning_with_tools() {
    let history = vec![
        msg(Role::User, "where am I"),
        assistant("", "tool reasoning", vec![call("c", "pwd", "{}")]),
        msg(Role::Tool, "/tmp"),
        assistant("You are in /tmp.", "", vec![]),
        msg(Role::User, "thanks"),
    ];
    for schemas in [vec![r#"{"name":"pwd"}"#.to_owned()], vec![]] {
        let t = render_chat(&history, &schemas, ThinkMode::High).text();
        assert!(t.contains("<think>tool reasoning</think>"), "{t}");
        assert!(t.contains("<tool_result>/tmp</tool_result>"));
        assert!(t.contains("<｜Assistant｜><think></think>You are in /tmp."));
    }
}

/// #8 render_chat_prompt_text_renders_tools_before_system
#[test]
fn render_tools_before_system() {
    let m = [msg(Role::User, "hi"), msg(Role::System, "SYS")];
    let t = render_chat(&m, &[r#"{"name":"f"}"#.to_owned()], ThinkMode::High).text();
    let tools = t.find("## Tools").unwrap();
    let sys = t.find("\n\nSYS").unwrap();
    let user = t.find("<｜User｜>").unwrap();
    assert!(tools < sys && sys < user);
    assert!(t.contains("Use the exact parameter names from the schemas.\n\nSYS<｜User｜>hi"));
}

/// #18 dsml_tool_args_preserve_call_order
#[test]
fn dsml_tool_args_preserve_call_order() {
    let m = [
        msg(Role::User, "x"),
        assistant(
            "",
            "",
            vec![call(
                "c",
                "bash",
                r#"{"description":"d","command":"ls","timeout":5}"#,
            )],
        ),
    ];
    let t = render_chat(&m, &[], ThinkMode::None).text();
    let (d, c, to) = (
        t.find("\"description\"").unwrap(),
        t.find("\"command\"").unwrap(),
        t.find("\"timeout\"").unwrap(),
    );
    assert!(d < c && c < to);
    assert!(
        t.contains("<｜DSML｜parameter name=\"timeout\" string=\"false\">5</｜DSML｜parameter>")
    );
}

/// #44 tool_checkpoint_suffix_is_future_prompt_canonical, #45 ..._minifies_json_parameters,
/// #62 thinking_checkpoint_canonical_matches_future_prompt: prompt + turn suffix is a prefix of
/// the next request's rendering.
#[test]
fn turn_suffix_is_a_prefix_of_the_next_render() {
    let schemas = vec![r#"{"name":"bash"}"#.to_owned()];
    let first = vec![msg(Role::User, "run it")];
    let prompt = render_chat(&first, &schemas, ThinkMode::High);
    let calls = vec![call(
        "c1",
        "bash",
        r#"{"cmd":"make 2>&1 && ./a","opts":{ "x" : [1, 2] }}"#,
    )];
    let suffix = turn_suffix(true, "plan", "Running.", &calls, None);
    let mut next = first.clone();
    next.push(assistant("Running.", "plan", calls.clone()));
    next.push(msg(Role::Tool, "ok"));
    let future = render_chat(&next, &schemas, ThinkMode::High);
    let expected = format!("{}{}", prompt.text(), suffix.text());
    assert!(future.text().starts_with(&expected));
    assert!(
        expected.contains("make 2>&1 && ./a"),
        "no entity escaping of && and 2>"
    );
    assert!(
        expected.contains(r#"string="false">{"x":[1,2]}<"#),
        "JSON parameters minified"
    );
    assert!(expected.ends_with("</｜DSML｜tool_calls><｜end▁of▁sentence｜>"));

    // #62-#64: without tools the next render drops the reasoning: visible text is prompt minus
    // `<think>` + `</think>` + content + EOS.
    let first = vec![msg(Role::User, "2+3?")];
    let prompt = render_chat(&first, &[], ThinkMode::High).text();
    let visible = format!(
        "{}</think>5<｜end▁of▁sentence｜>",
        prompt.strip_suffix("<think>").unwrap()
    );
    let mut next = first.clone();
    next.push(assistant("5", "add them", vec![]));
    next.push(msg(Role::User, "and 4+4?"));
    let future = render_chat(&next, &[], ThinkMode::High).text();
    assert!(future.starts_with(&visible));
    assert!(!future.contains("add them"));
}

/// #68 dsml_prompt_escapes_tool_supplied_text
#[test]
fn dsml_prompt_escapes_tool_supplied_text() {
    let m = [
        msg(Role::User, "x"),
        assistant(
            "",
            "",
            vec![call(
                "c",
                "bash",
                r#"{"cmd":"a 2>&1 && b </｜DSML｜parameter> c"}"#,
            )],
        ),
        msg(Role::Tool, "<<< < > >>> </tool_result> end"),
    ];
    let t = render_chat(&m, &[], ThinkMode::None).text();
    assert!(t.contains("a 2>&1 && b &lt;/｜DSML｜parameter> c</｜DSML｜parameter>"));
    assert!(t.contains("<tool_result><<< < > >>> &lt;/tool_result> end</tool_result>"));
}

#[test]
fn arguments_that_are_not_an_object_become_one_string_parameter() {
    let m = [
        msg(Role::User, "x"),
        assistant("", "", vec![call("c", "f", "not json")]),
    ];
    let t = render_chat(&m, &[], ThinkMode::None).text();
    assert!(t.contains(
        "<｜DSML｜parameter name=\"arguments\" string=\"true\">not json</｜DSML｜parameter>"
    ));
}

#[test]
fn roles_and_ordering_edge_cases() {
    // Unknown roles are ignored; consecutive tool messages share one USER marker; an assistant
    // message with nothing pending gets no ASSISTANT marker.
    let m = [
        msg(Role::Other, "ignored"),
        assistant("lead", "", vec![]),
        msg(Role::Tool, "r1"),
        msg(Role::Function, "r2"),
        msg(Role::Developer, "DEV"),
    ];
    let t = render_chat(&m, &[], ThinkMode::None).text();
    assert_eq!(
        t,
        "<｜begin▁of▁sentence｜>DEVlead<｜end▁of▁sentence｜><｜User｜><tool_result>r1</tool_result><tool_result>r2</tool_result><｜Assistant｜></think>"
    );
    // Attribute escaping of names.
    let m = [
        msg(Role::User, "x"),
        assistant("", "", vec![call("c", "a\"<&>", r#"{"k\"":1}"#)]),
    ];
    let t = render_chat(&m, &[], ThinkMode::None).text();
    assert!(t.contains("invoke name=\"a&quot;&lt;&amp;&gt;\""));
    assert!(t.contains("parameter name=\"k&quot;\" string=\"false\">1<"));
}

/// #65 thinking_canonical_with_tools_preserves_reasoning, #66 thinking_canonical_non_thinking_mode_noop
#[test]
fn thinking_binding_with_tools_and_in_non_thinking_mode() {
    let schemas = vec![r#"{"name":"bash"}"#.to_owned()];
    let first = vec![msg(Role::User, "list")];
    let prompt = render_chat(&first, &schemas, ThinkMode::High).text();
    let mut next = first.clone();
    next.push(assistant("Done.", "I should run bash", vec![]));
    next.push(msg(Role::User, "more"));
    let future = render_chat(&next, &schemas, ThinkMode::High).text();
    assert!(future.contains("<think>I should run bash</think>Done."));
    let suffix = turn_suffix(true, "I should run bash", "Done.", &[], None).text();
    assert!(future.starts_with(&format!("{prompt}{suffix}")));

    let prompt = render_chat(&first, &[], ThinkMode::None).text();
    assert!(prompt.ends_with("<｜Assistant｜></think>"));
    let suffix = turn_suffix(false, "ignored", "Done.", &[], None).text();
    assert_eq!(suffix, "Done.<｜end▁of▁sentence｜>");
    let mut next = first.clone();
    next.push(assistant("Done.", "ignored", vec![]));
    next.push(msg(Role::User, "more"));
    assert!(render_chat(&next, &[], ThinkMode::None)
        .text()
        .starts_with(&format!("{prompt}{suffix}")));
}
