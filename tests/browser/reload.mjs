// Reload the page mid-stream: the answer shows again at once (sessionStorage) and continues
// from the last seq, with nothing lost or doubled.
import {
  renderedText,
  assert, env, log, rawText, scenario, send, signIn, turn, waitForStatus, waitForText, watchSockets, writeResult,
} from "./lib.mjs";

await scenario(async ({ page }) => {
  const sockets = watchSockets(page);
  await signIn(page);
  const id = await send(page, env.PROMPT);
  await waitForText(page, id, 300);
  const beforeReload = await rawText(page, id);
  assert.equal(await page.getAttribute(turn(id), "data-status"), "running", "still streaming at the reload");
  log(`reloading with ${beforeReload.length} characters shown`);
  const socketsBefore = sockets.length;

  await page.reload({ waitUntil: "domcontentloaded" });
  await page.waitForSelector(turn(id));
  await page.waitForFunction((selector) => document.querySelector(selector)?.textContent, `${turn(id)} [data-testid=raw]`);
  const restored = await rawText(page, id);
  log(`after the reload: ${restored.length} characters shown`);
  assert.ok(restored.startsWith(beforeReload), "the text from before the reload is shown again");

  await waitForStatus(page, id, "completed");
  const final = await rawText(page, id);
  assert.ok(final.startsWith(restored), "the text continued from where it was");

  // The new page resumed after its saved seq: no snapshot, the next seq first.
  const socket = sockets[socketsBefore];
  assert.ok(socket, "the reloaded page opened a WebSocket");
  const subscribe = socket.sent.find((frame) => frame.type === "subscribe" && frame.id === id);
  assert.ok(subscribe && subscribe.after > 0, `resumed after a seq, not from 0: ${JSON.stringify(subscribe)}`);
  const first = socket.received.find((frame) => frame.id === id && ["snapshot", "delta", "reset", "done"].includes(frame.type));
  assert.equal(first.type, "delta");
  assert.equal(first.seq, subscribe.after + 1);
  writeResult({ id, text: final, rendered: await renderedText(page, id), before_reload: beforeReload, restored, resumed_after: subscribe.after });
});
