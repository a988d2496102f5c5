// Sign in, send a prompt, watch the answer stream in as rendered Markdown over the WebSocket,
// then find its conversation in the sidebar, which loads from the database.
import {
  assert, env, log, rawText, scenario, send, signIn, turn, waitForState, waitForStatus, watchSockets, writeResult,
} from "./lib.mjs";

await scenario(async ({ page }) => {
  const sockets = watchSockets(page);
  await signIn(page);
  await waitForState(page, "websocket");
  const id = await send(page, env.PROMPT);
  log("generation", id);

  // Streaming: the text is seen growing, several times, while the Stop button is offered.
  const lengths = [];
  for (let polls = 0; polls < 400; polls++) {
    // One look at the page at a time, so status, text and buttons are from the same moment.
    const { status, length, stopShown } = await page.evaluate((selector) => {
      const element = document.querySelector(selector);
      return {
        status: element.dataset.status,
        length: element.querySelector("[data-testid=raw]").textContent.length,
        stopShown: !document.getElementById("stop").hidden,
      };
    }, turn(id));
    if (length > 0 && length !== lengths.at(-1)) lengths.push(length);
    if (status === "completed") break;
    if (status === "running") assert.equal(stopShown, true, "Stop is shown while streaming");
    await page.waitForTimeout(50);
  }
  log("text lengths seen while streaming:", lengths.join(" "));
  assert.ok(lengths.length >= 4, `the answer should arrive in pieces, saw ${lengths.length} lengths`);
  await waitForStatus(page, id, "completed");
  assert.equal(await page.isVisible("#send"), true, "Send is back once the answer is complete");

  // Rendered as Markdown, not shown as source.
  const answer = `${turn(id)} [data-testid=answer]`;
  assert.equal(await page.locator(`${answer} h2`).count(), 1);
  assert.equal(await page.locator(`${answer} ol > li`).count(), 3);
  assert.equal(await page.locator(`${answer} pre code`).count(), 1);
  assert.equal(await page.locator(`${answer} table`).count(), 1);
  assert.equal(await page.locator(`${answer} a[target=_blank][rel~=noopener]`).count(), 1);
  const shown = await rawText(page, id);

  // Every event came over the one WebSocket.
  assert.equal(sockets.length, 1);
  const events = sockets[0].received.filter((frame) => frame.id === id);
  assert.equal(events.at(-1).type, "done");

  // The sidebar (GET /conversations, from the database) lists its conversation; opening it
  // reads that conversation once and shows the same answer.
  const active = "#history button.active[data-conversation-id]";
  await page.waitForSelector(active);
  const conversationId = await page.getAttribute(active, "data-conversation-id");
  await page.click("#new-chat");
  assert.equal(await page.locator(".turn").count(), 0);
  const requests = [];
  page.on("request", (request) => requests.push(request.url()));
  await page.click(`#history button[data-conversation-id="${conversationId}"]`);
  await waitForStatus(page, id, "completed");
  assert.equal(await rawText(page, id), shown, "the conversation shows the same answer");
  assert.deepEqual(requests.filter((url) => url.includes(id)), [], "a finished answer is not fetched again");
  await page.locator("#thread").evaluate((el) => (el.scrollTop = 0));
  writeResult({ id, text: shown });
});
