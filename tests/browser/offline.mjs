// The network goes away mid-stream (Chromium's network emulation) and comes back: the page
// shows "Offline", then resumes after the last seq it had, with nothing lost or doubled.
import {
  renderedText,
  assert, env, log, rawText, scenario, send, signIn, sleep, turn, waitForState, waitForStatus, waitForText,
  watchSockets, writeResult,
} from "./lib.mjs";

await scenario(async ({ context, page, shoot }) => {
  const sockets = watchSockets(page);
  await signIn(page);
  const id = await send(page, env.PROMPT);
  await waitForText(page, id, 200);

  await context.setOffline(true);
  await waitForState(page, "offline", 5000);
  const atOffline = await rawText(page, id);
  await sleep(1500); // the generation goes on at the server meanwhile
  const whileOffline = await rawText(page, id);
  assert.equal(whileOffline, atOffline, "nothing arrives while offline");
  assert.equal(await page.getAttribute(turn(id), "data-status"), "running");
  log(`offline at ${atOffline.length} characters`);
  await shoot(); // the moment that matters: offline mid-answer

  await context.setOffline(false);
  await waitForState(page, "websocket", 15_000);
  await waitForStatus(page, id, "completed");
  const final = await rawText(page, id);
  assert.ok(final.startsWith(atOffline) && final.length > atOffline.length);

  // A new socket, resuming after the seq the page had.
  assert.equal(sockets.length, 2, "one socket before, one after");
  const subscribe = sockets[1].sent.find((frame) => frame.type === "subscribe" && frame.id === id);
  assert.ok(subscribe && subscribe.after > 0, JSON.stringify(subscribe));
  const first = sockets[1].received.find((frame) => frame.id === id && frame.seq !== undefined);
  assert.equal(first.seq, subscribe.after + 1, "no snapshot, no repeat: the next seq");
  writeResult({ id, text: final, rendered: await renderedText(page, id), at_offline: atOffline, resumed_after: subscribe.after });
});
