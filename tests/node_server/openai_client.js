#!/usr/bin/env node
// The official `openai` npm package as a Node.js user drives `plabs serve` (tests/test_gateway_clients.py).
//
//   node openai_client.js BASE_URL MODEL PROMPT
//
// Asks PROMPT five ways (chat streamed, chat whole, responses whole, responses streamed, models.retrieve)
// and prints one JSON object with what each gave; an error of the package is printed as
// {"error": {"name", "status", "code", "message"}} and the exit status is 1.
"use strict";

const OpenAI = require("openai");

async function main() {
  const [baseURL, model, prompt] = process.argv.slice(2);
  const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0, timeout: 60000 });
  const messages = [{ role: "user", content: prompt }];

  let streamed = "";
  let finish = null;
  let usage = null;
  const stream = await client.chat.completions.create({
    model, messages, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    if (chunk.choices.length) {
      streamed += chunk.choices[0].delta.content || "";
      finish = chunk.choices[0].finish_reason || finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  const whole = await client.chat.completions.create({ model, messages });

  const response = await client.responses.create({ model, input: prompt });
  let responseStreamed = "";
  const types = [];
  for await (const event of await client.responses.create({ model, input: prompt, stream: true })) {
    types.push(event.type);
    if (event.type === "response.output_text.delta") responseStreamed += event.delta;
  }
  const card = await client.models.retrieve(model);
  let missing = null;
  try {
    await client.models.retrieve("no-such-model");
  } catch (error) {
    missing = { name: error.constructor.name, status: error.status, code: error.code };
  }

  console.log(JSON.stringify({
    streamed, finish, usage,
    whole: whole.choices[0].message.content, wholeUsage: whole.usage,
    response: response.output_text, responseStreamed, types,
    model: card, missing,
  }));
}

main().catch((error) => {
  console.log(JSON.stringify({
    error: { name: error.constructor.name, status: error.status, code: error.code, message: error.message },
  }));
  process.exit(1);
});
