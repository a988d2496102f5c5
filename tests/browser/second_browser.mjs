// A second browser (its own profile: no shared storage) opens the conversation from the
// sidebar while the answer is streaming, and joins it mid-answer; then the first browser sends
// a follow-up and the second one shows it streaming without a click, then a regenerated
// answer and the switch back to the first one.
import { assert, env, log, rawText, scenario, send, signIn, turn, waitForStatus, waitForText, writeResult } from "./lib.mjs";

await scenario(async ({ browser, page }) => {
  await signIn(page);
  const id = await send(page, env.PROMPT);
  await waitForText(page, id, 100);

  const other = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
  const problems = [];
  other.on("pageerror", (error) => problems.push(error.message));
  await signIn(other);
  const active = "#history button.active[data-conversation-id]";
  await page.waitForSelector(active);
  const conversationId = await page.getAttribute(active, "data-conversation-id");
  await other.click(`#history button[data-conversation-id="${conversationId}"]`);
  await other.waitForSelector(turn(id));
  await waitForText(other, id, 1); // the snapshot of what was streamed so far
  const joinedAt = await rawText(other, id);
  assert.equal(await other.getAttribute(turn(id), "data-status"), "running", "joined mid-answer");
  log(`second browser joined at ${joinedAt.length} characters`);
  await waitForStatus(other, id, "completed");
  await waitForStatus(page, id, "completed");
  const textFirst = await rawText(page, id);
  const textSecond = await rawText(other, id);

  // The first browser asks the next question; the second hears of it and streams it.
  const followUp = await send(page, env.FOLLOW_UP);
  await other.waitForSelector(turn(followUp), { timeout: 15_000 });
  await waitForStatus(other, followUp, "completed");
  const followUpSecond = await rawText(other, followUp);

  // The first browser regenerates the follow-up, then flips back to the first answer: the
  // second browser shows the new branch, then follows the switch (a request, seen everywhere).
  await waitForStatus(page, followUp, "completed");
  await page.click(`${turn(followUp)} [data-testid=regenerate]`);
  const shown = (p) => p.$$eval(".turn", (turns) => turns.map((t) => t.dataset.generationId));
  await other.waitForFunction(
    ({ id, followUp }) => {
      const ids = [...document.querySelectorAll(".turn")].map((t) => t.dataset.generationId);
      return ids.length === 2 && ids[0] === id && ids[1] !== followUp;
    },
    { id, followUp },
    { timeout: 15_000 },
  );
  const regenerated = (await shown(other))[1];
  await waitForStatus(page, regenerated, "completed");
  await page.click(`${turn(regenerated)} [data-testid=branch-prev]`);
  await other.waitForSelector(turn(followUp), { timeout: 15_000 });
  assert.deepEqual(await shown(other), [id, followUp], "the second browser followed the switch");
  assert.deepEqual(problems, []);
  writeResult({
    id, follow_up: followUp, conversation_id: conversationId, joined_at: joinedAt,
    text_first: textFirst, text_second: textSecond, follow_up_second: followUpSecond,
  });
});
