// The official `openai` Node SDK against a running chatgate: one streamed tool call.
//
// Usage: node tool_call.mjs BASE_URL   (with $CHATGATE_TOKEN a user token)
// The gateway's `mock` model must point at `cargo run --example mock_upstream -- serve`,
// which answers a request with tools by calling the first tool with {"text": <user text>}.
import assert from "node:assert/strict";
import OpenAI from "openai";

const base = process.argv[2] ?? process.env.CHATGATE_BASE_URL;
const token = process.env.CHATGATE_TOKEN;
if (!base || !token) {
  console.error("usage: CHATGATE_TOKEN=… node tool_call.mjs BASE_URL");
  process.exit(2);
}
const client = new OpenAI({ baseURL: `${base.replace(/\/$/, "")}/v1`, apiKey: token, maxRetries: 0 });

const tools = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Current weather for a city",
      parameters: { type: "object", properties: { text: { type: "string" } }, required: ["text"] },
    },
  },
];

const stream = await client.chat.completions.create({
  model: "mock",
  messages: [
    { role: "developer", content: "Use the tools." },
    { role: "user", content: [{ type: "text", text: "weather in Lyon" }] },
  ],
  tools,
  tool_choice: "auto",
  stream: true,
  stream_options: { include_usage: true },
});

// Assembled the way SDK users do: fragments by index, arguments concatenated.
const calls = [];
let finish = null;
let usage = null;
let fragments = 0;
for await (const chunk of stream) {
  assert.equal(chunk.object, "chat.completion.chunk");
  if (chunk.usage) usage = chunk.usage;
  const choice = chunk.choices[0];
  if (!choice) continue;
  finish = choice.finish_reason ?? finish;
  for (const part of choice.delta.tool_calls ?? []) {
    fragments += 1;
    const call = (calls[part.index] ??= { id: "", name: "", arguments: "" });
    call.id ||= part.id ?? "";
    call.name += part.function?.name ?? "";
    call.arguments += part.function?.arguments ?? "";
  }
}
assert.equal(finish, "tool_calls");
assert.ok(fragments >= 2, `tool calls streamed in fragments (${fragments})`);
assert.equal(calls.length, 1);
assert.equal(calls[0].id, "call_mock_1");
assert.equal(calls[0].name, "get_weather");
assert.deepEqual(JSON.parse(calls[0].arguments), { text: "weather in Lyon" });
assert.ok(usage && usage.total_tokens > 0, "usage chunk");

// The SDK's own stream helper assembles the same call.
const runner = client.chat.completions.stream({
  model: "mock",
  messages: [{ role: "user", content: "weather in Nice" }],
  tools,
});
const final = await runner.finalChatCompletion();
const call = final.choices[0].message.tool_calls[0];
assert.equal(final.choices[0].finish_reason, "tool_calls");
assert.equal(call.function.name, "get_weather");
assert.deepEqual(JSON.parse(call.function.arguments), { text: "weather in Nice" });

console.log(`openai (node SDK) against ${base}: streamed tool call OK`);
