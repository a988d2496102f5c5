// frontend-sample/client.js in Node, over SSE (fetch streaming): streams one generation and
// prints what the client ended with, as JSON, for tests/jobs/test_provider_zoo.py.
// Env: BASE_URL, TOKEN, PROMPT.
import { StreamClient } from "../../frontend-sample/client.js";

const client = new StreamClient({
  token: () => process.env.TOKEN,
  baseUrl: process.env.BASE_URL,
  transports: ["sse"],
  storage: null,
});
const stream = await client.stream({ prompt: process.env.PROMPT });
const kinds = [];
let lastReasoning = "";
for await (const update of stream) {
  if (update.event) kinds.push(update.event.type);
  lastReasoning = update.reasoning;
}
client.close();
console.log(
  JSON.stringify({
    id: stream.id,
    text: stream.text,
    reasoning: stream.reasoning,
    update_reasoning: lastReasoning,
    kinds,
    status: stream.status,
  }),
);
