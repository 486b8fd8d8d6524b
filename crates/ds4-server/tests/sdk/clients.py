"""Drives a live `ds4-server --demo --test-forced-output` with the official OpenAI and Anthropic
Python SDKs. Usage: clients.py BASE_URL. Exits non-zero on the first failed check.

Outputs are steered through the test-only `x-ds4-test-output` header (percent-encoded UTF-8), so
the model's bytes still go through the real tokenizer, decode loop, DSML parser and SSE writers.
"""
import json
import sys
import urllib.parse

import anthropic
import openai

BASE = sys.argv[1]
DSML = (
    "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
    "<｜DSML｜parameter name=\"city\" string=\"true\">Rome</｜DSML｜parameter>\n"
    "<｜DSML｜parameter name=\"days\" string=\"false\">2</｜DSML｜parameter>\n"
    "</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
)
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                         "required": ["city"]}}}]


def forced(text):
    return {"x-ds4-test-output": urllib.parse.quote(text, safe="")}


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")
    print(f"ok: {what}")


oa = openai.OpenAI(base_url=f"{BASE}/v1", api_key="unused", max_retries=0, timeout=60)

# ---- chat: non-streaming, reasoning split ----
r = oa.chat.completions.create(model="deepseek-v4-flash", messages=[{"role": "user", "content": "Hi"}],
                               extra_headers=forced("Greeting.</think>Hello from ds4"))
check(r.choices[0].message.content == "Hello from ds4", "chat content")
check(r.choices[0].message.model_extra.get("reasoning_content") == "Greeting.",
      "chat reasoning_content")
check(r.choices[0].finish_reason == "stop", "chat finish stop")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "chat usage")

# ---- chat: streaming, reasoning on and off ----
def stream_parts(**kw):
    parts = {"reasoning": "", "content": ""}
    finish = None
    for chunk in oa.chat.completions.create(model="deepseek-v4-flash", stream=True, **kw):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        parts["content"] += d.content or ""
        parts["reasoning"] += (d.model_extra or {}).get("reasoning_content") or ""
        finish = chunk.choices[0].finish_reason or finish
    return parts, finish

p, fin = stream_parts(messages=[{"role": "user", "content": "Hi"}], extra_headers=forced("Think.</think>Streamed answer"))
check(p == {"reasoning": "Think.", "content": "Streamed answer"} and fin == "stop", "chat stream with reasoning")
p, _ = stream_parts(messages=[{"role": "user", "content": "Hi"}], extra_body={"thinking": {"type": "disabled"}},
                    extra_headers=forced("No reasoning here"))
check(p == {"reasoning": "", "content": "No reasoning here"}, "chat stream with reasoning off")

# ---- chat: tool-call round trip ----
msgs = [{"role": "user", "content": "Weather in Rome for 2 days?"}]
r = oa.chat.completions.create(model="deepseek-v4-flash", messages=msgs, tools=TOOLS,
                               extra_headers=forced("Need the tool.</think>Let me check." + DSML))
m = r.choices[0].message
check(r.choices[0].finish_reason == "tool_calls", "tool call finish")
call = m.tool_calls[0]
check(call.id.startswith("call_") and call.function.name == "get_weather", "tool call id and name")
check(json.loads(call.function.arguments) == {"city": "Rome", "days": 2}, "tool call arguments")
first_prompt = r.usage.prompt_tokens
msgs.append(m.model_dump(exclude_none=True))
msgs.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24C"})
r2 = oa.chat.completions.create(model="deepseek-v4-flash", messages=msgs, tools=TOOLS,
                                extra_headers=forced("Report it.</think>It is sunny in Rome."))
check(r2.choices[0].message.content == "It is sunny in Rome.", "tool round trip answer")
cached = r2.usage.prompt_tokens_details.cached_tokens
check(cached > first_prompt, f"tool round trip reuses the live prefix (cached {cached} > {first_prompt})")

# streamed tool call through the SDK's accumulator
args, name = "", None
for chunk in oa.chat.completions.create(model="deepseek-v4-flash", stream=True, messages=msgs[:1], tools=TOOLS,
                                        extra_headers=forced("Tool.</think>" + DSML)):
    for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
        name = tc.function.name or name
        args += tc.function.arguments or ""
check(name == "get_weather" and json.loads(args) == {"city": "Rome", "days": 2}, "chat streamed tool call")

# ---- Responses: streaming events in order ----
types = []
final = None
with oa.responses.stream(model="deepseek-v4-flash", input="Weather?", reasoning={"summary": "auto"},
                         tools=[{"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}],
                         extra_headers=forced("Check it.</think>On it." + DSML)) as s:
    for ev in s:
        types.append(ev.type)
    final = s.get_final_response()
check(types[0] == "response.created" and types[-1] == "response.completed", "responses first/last events")
check(types.index("response.reasoning_summary_text.delta") < types.index("response.output_text.delta")
      < types.index("response.function_call_arguments.delta"), "responses event order")
kinds = [o.type for o in final.output]
check(kinds == ["reasoning", "message", "function_call"], f"responses output items {kinds}")
check(json.loads(final.output[2].arguments) == {"city": "Rome", "days": 2}, "responses function call arguments")
r = oa.responses.create(model="deepseek-v4-flash", input="Hi", extra_headers=forced("x</think>Plain"))
check(r.output_text == "Plain" and r.status == "completed", "responses non-streaming")

# ---- Anthropic ----
an = anthropic.Anthropic(base_url=BASE, api_key="unused", max_retries=0, timeout=60)
msg = an.messages.create(model="deepseek-v4-flash", max_tokens=200, messages=[{"role": "user", "content": "Hi"}],
                         extra_headers=forced("Hmm.</think>Hello, Claude client"))
check([b.type for b in msg.content] == ["thinking", "text"] and msg.content[1].text == "Hello, Claude client",
      "anthropic message blocks")
check(msg.stop_reason == "end_turn" and msg.usage.input_tokens == 0, "anthropic stop reason and usage")

atools = [{"name": "get_weather", "description": "Weather", "input_schema": TOOLS[0]["function"]["parameters"]}]
events = []
with an.messages.stream(model="deepseek-v4-flash", max_tokens=300, tools=atools,
                        messages=[{"role": "user", "content": "Weather in Rome?"}],
                        extra_headers=forced("Need weather.</think>Checking." + DSML)) as s:
    for ev in s:
        events.append(ev.type)
    final = s.get_final_message()
check(events[0] == "message_start" and events[-1] == "message_stop", "anthropic stream framing")
check([b.type for b in final.content] == ["thinking", "text", "tool_use"], "anthropic streamed blocks")
tool = final.content[2]
check(tool.id.startswith("toolu_") and tool.input == {"city": "Rome", "days": 2}, "anthropic streamed tool_use input")
check(final.stop_reason == "tool_use", "anthropic stop_reason tool_use")
msg2 = an.messages.create(model="deepseek-v4-flash", max_tokens=200, tools=atools, messages=[
    {"role": "user", "content": "Weather in Rome?"},
    {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "Sunny"}]}],
    extra_headers=forced("Done.</think>Sunny it is."))
check(msg2.content[-1].text == "Sunny it is.", "anthropic tool round trip")
check(msg2.usage.cache_read_input_tokens > 0, "anthropic round trip reuses the live prefix")
print("all SDK checks passed")
