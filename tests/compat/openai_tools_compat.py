#!/usr/bin/env python3
"""The official `openai` Python package against a running chatgate, for what real chat apps
send: tools (whole and streamed, and a tool result going back), content parts and a
`developer` message.

Usage: openai_tools_compat.py [BASE_URL]
  BASE_URL         chatgate's base URL, e.g. http://127.0.0.1:8080 (else $CHATGATE_BASE_URL)
  $CHATGATE_TOKEN  a user token (`chatgate token --sub compat`)

The gateway's `mock` model must point at `cargo run --example mock_upstream -- serve`, which
answers a request with tools by calling the first tool with {"text": <last user text>}, a
request ending in a tool result with "tool said <result>", and a request with
metadata {"mock_reply": "describe"} with a JSON description of the request it received.
"""

import json
import os
import sys

import openai
from openai import OpenAI

MODEL = "mock"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"],
            },
        },
    }
]
PARTS = [
    {"type": "text", "text": "weather in"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    {"type": "text", "text": "Paris"},
]
MESSAGES = [
    {"role": "developer", "content": "Use the tools when they help."},
    {"role": "user", "content": PARTS},
]


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def check_request_reaches_the_upstream(client):
    completion = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0.3,
        max_tokens=50,
        seed=7,
        response_format={"type": "text"},
        metadata={"mock_reply": "describe"},
        extra_body={"x_vendor_option": {"level": 2}},
    )
    seen = json.loads(completion.choices[0].message.content)
    check(seen["roles"] == ["developer", "user"], f"roles upstream: {seen['roles']}")
    check(seen["part_types"] == ["text", "image_url", "text"], f"parts: {seen['part_types']}")
    params = seen["params"]
    for name, value in [
        ("temperature", 0.3),
        ("max_tokens", 50),
        ("seed", 7),
        ("response_format", {"type": "text"}),
        ("metadata", {"mock_reply": "describe"}),
        ("x_vendor_option", {"level": 2}),
    ]:
        check(params.get(name) == value, f"{name} upstream: {params.get(name)!r}")


def check_tool_call_round_trip(client):
    completion = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice="auto"
    )
    choice = completion.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish_reason: {choice.finish_reason}")
    calls = choice.message.tool_calls
    check(calls is not None and len(calls) == 1, f"tool_calls: {calls}")
    call = calls[0]
    check(call.id == "call_mock_1", f"id: {call.id}")
    check(call.function.name == "get_weather", f"name: {call.function.name}")
    check(
        json.loads(call.function.arguments) == {"text": "weather in Paris"},
        f"arguments: {call.function.arguments}",
    )
    followup = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES
        + [
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=TOOLS,
    )
    answer = followup.choices[0]
    check(answer.finish_reason == "stop", f"finish_reason: {answer.finish_reason}")
    check(answer.message.content == "tool said sunny", f"content: {answer.message.content!r}")


def check_streamed_tool_call(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls, finish, usage = {}, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for part in choice.delta.tool_calls or []:
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = call["id"] or (part.id or "")
            if part.function:
                call["name"] += part.function.name or ""
                call["arguments"] += part.function.arguments or ""
    check(finish == "tool_calls", f"finish_reason: {finish}")
    check(list(calls) == [0], f"calls: {calls}")
    check(calls[0]["name"] == "get_weather", f"name: {calls[0]}")
    check(
        json.loads(calls[0]["arguments"]) == {"text": "weather in Paris"},
        f"arguments: {calls[0]['arguments']}",
    )
    check(usage is not None and usage.total_tokens > 0, f"usage: {usage}")


def check_echo_reads_text_parts(client):
    completion = client.chat.completions.create(model="echo", messages=MESSAGES)
    content = completion.choices[0].message.content
    check(content == "weather in Paris", f"echo of parts: {content!r}")


def check_unknown_role_is_refused(client):
    try:
        client.chat.completions.create(
            model="echo", messages=[{"role": "wizard", "content": "abracadabra"}]
        )
    except openai.BadRequestError as err:
        check("unknown role" in str(err.body), f"body: {err.body}")
    else:
        raise AssertionError("an unknown role must be refused")


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CHATGATE_BASE_URL")
    token = os.environ.get("CHATGATE_TOKEN")
    if not base or not token:
        sys.exit(__doc__)
    client = OpenAI(base_url=base.rstrip("/") + "/v1", api_key=token, max_retries=0, timeout=30)
    check_request_reaches_the_upstream(client)
    check_tool_call_round_trip(client)
    check_streamed_tool_call(client)
    check_echo_reads_text_parts(client)
    check_unknown_role_is_refused(client)
    print(f"openai {openai.__version__} against {base}: params, parts, developer, tools OK")


if __name__ == "__main__":
    main()
