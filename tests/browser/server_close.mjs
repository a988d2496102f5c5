// The server closes the socket mid-stream with 1001 (Daphne going away on restart) and then
// with 4008 (a reader too slow for WS_MAX_BUFFER): the page reconnects each time and resumes
// after its last seq, and ends with the stored output exactly.
//
// The page's WebSocket goes through Playwright's routeWebSocket, connected to the real server
// (every frame passes through unchanged); at the chosen moments the route closes the page's
// side with the server's code, as Daphne would. Restarting Daphne itself would also stop the
// embedded tier's in-process worker and test the worker's recovery instead of the client's.
import {
  assert, env, log, rawText, recordStates, renderedText, scenario, send, signIn, states, until, waitForState,
  waitForStatus, waitForText, writeResult,
} from "./lib.mjs";

await scenario(async ({ page }) => {
  const sockets = [];
  await page.routeWebSocket(/\/ws\/v1$/, (ws) => {
    const server = ws.connectToServer();
    const record = { route: ws, sent: [], received: [] };
    sockets.push(record);
    ws.onMessage((message) => {
      record.sent.push(JSON.parse(String(message)));
      server.send(message);
    });
    server.onMessage((message) => {
      record.received.push(JSON.parse(String(message)));
      ws.send(message);
    });
  });
  await signIn(page);
  await waitForState(page, "websocket");
  await recordStates(page);
  const id = await send(page, env.PROMPT);

  const resumes = [];
  for (const [code, reason, minLength] of [[1001, "going away", 300], [4008, "slow consumer", 2000]]) {
    await waitForText(page, id, minLength);
    const socketsBefore = sockets.length;
    const at = (await rawText(page, id)).length;
    await sockets.at(-1).route.close({ code, reason });
    log(`closed with ${code} at ${at} characters`);
    // A new socket that has delivered an event of the stream again.
    await until(
      () => sockets.length > socketsBefore && sockets.at(-1).received.some((f) => f.id === id && f.seq !== undefined),
      `a new socket after ${code}`,
    );
    const socket = sockets.at(-1);
    const subscribe = socket.sent.find((frame) => frame.type === "subscribe" && frame.id === id);
    assert.ok(subscribe && subscribe.after > 0, `resumed after a seq: ${JSON.stringify(subscribe)}`);
    const first = socket.received.find((frame) => frame.id === id && frame.seq !== undefined);
    assert.equal(first.seq, subscribe.after + 1, "no snapshot, no repeat");
    resumes.push({ code, after: subscribe.after });
  }
  await waitForStatus(page, id, "completed");
  const seen = await states(page);
  log("states:", seen.join(" > "));
  assert.ok(seen.filter((state) => state === "reconnecting").length >= 2, "the page showed each reconnect");
  assert.equal(seen.at(-1), "websocket");
  writeResult({ id, text: await rawText(page, id), rendered: await renderedText(page, id), resumes });
});
