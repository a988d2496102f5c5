// A long stream with short-lived tokens: the client asks its token provider for a new JWT
// before each expires and sends it on the open socket (`auth` again), so the server never
// closes it with 4401 and the page never shows a break.
//
// The page's token provider (window.LLM_SAMPLE.token, the sample's hook for an app's own
// auth) calls a function exposed from this script, which signs HS256 tokens that live
// TOKEN_TTL_S seconds with the service's JWT_SECRET: an identity provider in miniature.
import { createHmac } from "node:crypto";
import {
  renderedText,
  assert, env, log, rawText, recordStates, scenario, send, states, waitForState, waitForStatus, watchSockets,
  writeResult, BASE_URL,
} from "./lib.mjs";

const ttlS = Number(env.TOKEN_TTL_S ?? 6);
const issued = [];

function issueToken() {
  const now = Math.floor(Date.now() / 1000);
  const encode = (object) => Buffer.from(JSON.stringify(object)).toString("base64url");
  const body = `${encode({ alg: "HS256", typ: "JWT" })}.${encode({ sub: env.USERNAME, iat: now, exp: now + ttlS })}`;
  const signature = createHmac("sha256", env.JWT_SECRET).update(body).digest("base64url");
  issued.push(now + ttlS);
  return `${body}.${signature}`;
}

await scenario(async ({ page }) => {
  const sockets = watchSockets(page);
  await page.exposeFunction("issueTestToken", issueToken);
  await page.addInitScript(() => (window.LLM_SAMPLE = { token: () => window.issueTestToken() }));
  await page.goto(BASE_URL + "/");
  await waitForState(page, "websocket");
  await recordStates(page);
  const id = await send(page, env.PROMPT);
  const started = Date.now();
  await waitForStatus(page, id, "completed", 60_000);
  const seconds = (Date.now() - started) / 1000;
  const text = await rawText(page, id);

  log(`streamed for ${seconds.toFixed(1)} s with ${issued.length} tokens of ${ttlS} s`);
  assert.ok(seconds > 2 * ttlS, "the stream outlived several tokens");
  assert.equal(sockets.length, 1, "one socket for the whole stream: no reconnect");
  const [socket] = sockets;
  const auths = socket.sent.filter((frame) => frame.type === "auth");
  const oks = socket.received.filter((frame) => frame.type === "auth.ok");
  assert.ok(auths.length >= 3, `re-authenticated on the open socket (${auths.length} auth frames)`);
  assert.equal(oks.length, auths.length, "every token was accepted");
  const expiries = oks.map((frame) => frame.expires_at);
  assert.deepEqual(expiries, [...expiries].sort((a, b) => a - b), "each token expires later");
  assert.equal(socket.received.filter((frame) => frame.type === "error").length, 0, "no token_expired");
  assert.equal(socket.closed, false);
  const seen = await states(page);
  assert.deepEqual([...new Set(seen)], ["websocket"], `the badge never left WebSocket: ${seen.join(" > ")}`);
  writeResult({ id, text, rendered: await renderedText(page, id), tokens_issued: issued.length, auth_frames: auths.length });
});
