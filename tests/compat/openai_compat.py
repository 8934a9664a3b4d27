#!/usr/bin/env python3
"""Checks that the official `openai` Python package works against a running chatgate.

Usage: openai_compat.py [BASE_URL]
  BASE_URL      chatgate's base URL, e.g. http://127.0.0.1:8080 (else $CHATGATE_BASE_URL)
  $CHATGATE_TOKEN  a user token (`chatgate token --sub compat`)

Uses the built-in `echo` model, whose replies and token counts are fixed by the contract:
the reply is the last user message word by word, prompt_tokens counts the words of every
message, completion_tokens the words of the reply.
"""

import os
import sys

import openai
from openai import OpenAI

SYSTEM = "answer briefly"
PROMPT = "hello from the official openai client"
PROMPT_TOKENS = len(SYSTEM.split()) + len(PROMPT.split())
COMPLETION_TOKENS = len(PROMPT.split())
MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": PROMPT},
]


def check(condition, what):
    if not condition:
        raise AssertionError(what)


def check_models(client):
    ids = [model.id for model in client.models.list().data]
    check("echo" in ids, f"echo is listed by /v1/models: {ids}")


def check_completion(client):
    completion = client.chat.completions.create(model="echo", messages=MESSAGES)
    check(completion.object == "chat.completion", f"object: {completion.object}")
    check(completion.id.startswith("chatcmpl-"), f"id: {completion.id}")
    check(completion.model == "echo", f"model: {completion.model}")
    choice = completion.choices[0]
    check(choice.message.role == "assistant", f"role: {choice.message.role}")
    check(choice.message.content == PROMPT, f"content: {choice.message.content!r}")
    check(choice.finish_reason == "stop", f"finish_reason: {choice.finish_reason}")
    usage = completion.usage
    check(usage is not None, "usage present")
    check(
        (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        == (PROMPT_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS + COMPLETION_TOKENS),
        f"usage: {usage}",
    )


def check_stream(client):
    stream = client.chat.completions.create(
        model="echo",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, chunks, finish = "", None, 0, None
    for chunk in stream:
        chunks += 1
        check(chunk.object == "chat.completion.chunk", f"object: {chunk.object}")
        if chunk.choices:
            delta = chunk.choices[0].delta
            text += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    check(text == PROMPT, f"streamed text: {text!r}")
    check(finish == "stop", f"finish_reason: {finish}")
    check(chunks >= COMPLETION_TOKENS + 2, f"chunks: {chunks}")
    check(usage is not None, "usage chunk present")
    check(
        (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
        == (PROMPT_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS + COMPLETION_TOKENS),
        f"usage: {usage}",
    )


def check_errors(client, base_url):
    try:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    except openai.BadRequestError as err:
        check(err.status_code == 400, f"status: {err.status_code}")
        check("unsupported_model" in str(err.body), f"body: {err.body}")
    else:
        raise AssertionError("an unknown model must be refused")
    anonymous = OpenAI(base_url=base_url, api_key="not-a-token", max_retries=0)
    try:
        anonymous.chat.completions.create(model="echo", messages=MESSAGES)
    except openai.AuthenticationError as err:
        check(err.status_code == 401, f"status: {err.status_code}")
    else:
        raise AssertionError("a bad token must be refused")


def main():
    base = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CHATGATE_BASE_URL")
    token = os.environ.get("CHATGATE_TOKEN")
    if not base or not token:
        sys.exit(__doc__)
    base_url = base.rstrip("/") + "/v1"
    client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=30)
    check_models(client)
    check_completion(client)
    check_stream(client)
    check_errors(client, base_url)
    print(f"openai {openai.__version__} against {base}: models, completion, stream, errors OK")


if __name__ == "__main__":
    main()
