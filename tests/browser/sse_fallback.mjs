// The WebSocket cannot connect: SSE takes over and the answer streams all the same.
//
// How the WebSocket is blocked: the page's wsUrl (window.LLM_SAMPLE, the sample's embedding
// hook) points at a port where nothing listens, so every attempt is refused before the
// upgrade, as it is behind a proxy that strips the Upgrade header or a firewall that drops
// it. (Playwright's routeWebSocket would instead hand the page a socket that opens and then
// closes: a rarer failure, and it would bypass the browser's own connection error path.)
// SSE_MODE=fetch reads SSE with streaming fetch and the Authorization header;
// SSE_MODE=eventsource uses the browser's EventSource with a ticket in the URL.
import {
  renderedText,
  assert, env, log, rawText, recordStates, scenario, send, signIn, states, waitForState, waitForStatus, writeResult,
} from "./lib.mjs";

const mode = env.SSE_MODE ?? "fetch";

await scenario(async ({ page }) => {
  await page.addInitScript(
    ({ wsUrl, sse }) => (window.LLM_SAMPLE = { wsUrl, sse }),
    { wsUrl: `ws://127.0.0.1:${env.CLOSED_PORT}/ws/v1`, sse: mode },
  );
  const events = [];
  page.on("request", (request) => {
    if (request.url().includes("/events")) events.push({ url: request.url(), headers: request.headers() });
  });
  const statuses = [];
  page.on("response", (response) => response.url().includes("/events") && statuses.push(response.status()));
  const tickets = [];
  page.on("request", (request) => request.url().endsWith("/ticket") && tickets.push(request.method()));
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  // The page's CSP allows connections to its own origin only, so the browser may refuse the
  // other port itself (a console error) before any socket exists: blocked all the same.
  const refusals = [];
  page.on("console", (message) => {
    const text = message.text();
    if (text.includes("Content Security Policy") && text.includes(`:${env.CLOSED_PORT}/ws/v1`)) {
      refusals.push(text);
    }
  });

  await signIn(page);
  await waitForState(page, "sse");
  await recordStates(page);
  const id = await send(page, env.PROMPT);
  await waitForStatus(page, id, "completed");
  const text = await rawText(page, id);

  assert.ok(sockets.length + refusals.length >= 1, "the WebSocket was tried");
  assert.ok(sockets.every((url) => url.includes(`:${env.CLOSED_PORT}/`)), "only at the blocked address");
  assert.ok(events.length >= 1, "the events came over SSE");
  assert.equal(statuses[0], 200, `the first SSE request was accepted (statuses: ${statuses.join(" ")})`);
  if (mode === "fetch") {
    assert.match(events[0].headers.authorization ?? "", /^Bearer ey/, "fetch sends the token in the header");
    assert.ok(!events[0].url.includes("ticket="));
  } else {
    assert.deepEqual(tickets.slice(0, 1), ["POST"], "a ticket was asked for");
    assert.match(events[0].url, /[?&]ticket=/, "EventSource presents the ticket in the URL");
    assert.equal(events[0].headers.authorization, undefined);
  }
  assert.equal(await page.getAttribute("#connection", "data-state"), "sse");
  assert.match(await page.textContent("#connection"), /SSE/);
  log("states:", (await states(page)).join(" > "));
  writeResult({ id, text, rendered: await renderedText(page, id), mode, event_requests: events.length });
});
