"""Responses tool round trip on a live ds4-server (run with --demo --test-forced-output).

Turn 1 (thinking, no reasoning summary) ends in a tool call; turn 2 replays the history the way
Codex does: the client never saw the reasoning, so its replay renders `<think></think>` where the
live KV holds the sampled reasoning. Prints usage and wall time of turn 2, then sends turn 2 again
to a server that has no live state (URL2, a fresh server) for the cold comparison.
"""
import json, sys, time, urllib.parse, urllib.request

URL, URL2 = sys.argv[1], sys.argv[2]
DSML = ("\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n"
        "<｜DSML｜parameter name=\"city\" string=\"true\">Rome</｜DSML｜parameter>\n"
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls>")
TOOLS = [{"type": "function", "name": "get_weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
DOC = " ".join(f"rule {i}: keep answers short." for i in range(600))


def post(url, body, forced):
    req = urllib.request.Request(url + "/v1/responses", data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json",
        "x-ds4-test-output": urllib.parse.quote(forced, safe=""),
    })
    t = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        v = json.loads(r.read())
    return time.time() - t, v


first = {"instructions": DOC, "input": "Weather in Rome?", "tools": TOOLS}
t1, v1 = post(URL, first, "I should look it up." * 20 + "</think>" + DSML)
call = next(i for i in v1["output"] if i["type"] == "function_call")
second = {"instructions": DOC, "tools": TOOLS, "input": [
    {"type": "message", "role": "user", "content": "Weather in Rome?"},
    {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": call["arguments"]},
    {"type": "function_call_output", "call_id": call["call_id"], "output": "Sunny, 24C"}]}
t2, v2 = post(URL, second, "ok</think>Sunny.")
t3, v3 = post(URL2, second, "ok</think>Sunny.")
for name, t, v in (("turn 1 (cold)", t1, v1), ("turn 2 (live)", t2, v2), ("turn 2 (fresh server)", t3, v3)):
    u = v["usage"]
    d = u["input_tokens_details"]
    print(f"{name}: {t:.2f}s input={u['input_tokens']} cached={d['cached_tokens']} "
          f"prefilled={d['cache_write_tokens']} output={u['output_tokens']}")
