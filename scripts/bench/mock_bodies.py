"""Writes the mock upstream's nginx config: a whole chat completion at /json/..., a 22-event
SSE stream at /sse/... (what chatgate asks an upstream for), both static `return 200`."""
import json
import sys

port, workdir = sys.argv[1], sys.argv[2]
words = "the quick brown fox jumps over the lazy dog and then it runs far away to rest again now".split()
text = " ".join(words)
completion = {
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1764460800, "model": "mock",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": len(words), "total_tokens": 9 + len(words)},
}


def chunk(delta, finish=None, usage=None):
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1764460800,
            "model": "mock", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage
    return "data: " + json.dumps(body, separators=(",", ":")) + "\n\n"


events = [chunk({"role": "assistant", "content": ""})]
events += [chunk({"content": (" " if i else "") + w}) for i, w in enumerate(words[:19])]
events += [chunk({}, usage=completion["usage"])]
events += ["data: [DONE]\n\n"]
assert len(events) == 22, len(events)
sse = "".join(events)


def quoted(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


conf = f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx_error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location = /json/v1/chat/completions {{
            default_type application/json;
            return 200 {quoted(json.dumps(completion, separators=(",", ":")))};
        }}
        location = /sse/v1/chat/completions {{
            default_type text/event-stream;
            return 200 {quoted(sse)};
        }}
    }}
}}
"""
with open(f"{workdir}/nginx.conf", "w") as out:
    out.write(conf)
