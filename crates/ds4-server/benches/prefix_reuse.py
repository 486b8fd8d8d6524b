import json, time, urllib.request, sys
URL = sys.argv[1]
def post(body):
    req = urllib.request.Request(URL + "/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t = time.time()
    with urllib.request.urlopen(req, timeout=600) as r:
        v = json.loads(r.read())
    return time.time() - t, v
doc = " ".join(f"item{i} is {i*7%13}" for i in range(700))
m1 = [{"role": "user", "content": "Summarize: " + doc}]
t1, v1 = post({"messages": m1, "max_tokens": 8, "think": False, "temperature": 0})
m2 = m1 + [{"role": "assistant", "content": v1["choices"][0]["message"]["content"]}, {"role": "user", "content": "Shorter please."}]
t2, v2 = post({"messages": m2, "max_tokens": 8, "think": False, "temperature": 0})
for name, t, v in (("cold", t1, v1), ("follow-up", t2, v2)):
    u = v["usage"]
    print(f"{name}: {t:.2f}s prompt={u['prompt_tokens']} cached={u['prompt_tokens_details']['cached_tokens']} prefilled={u['prompt_tokens_details']['cache_write_tokens']} generated={u['completion_tokens']}")
