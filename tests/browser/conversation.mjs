// A conversation in the page: a follow-up that needs the earlier turn (the server sends it to
// the model), a regenerated answer (a branch) the user flips back from with the arrows, and an
// edited first prompt (another branch).
import { assert, env, log, rawText, scenario, send, signIn, turn, waitForStatus, writeResult } from "./lib.mjs";

/** The ids of the turns shown, in order. */
const shownTurns = (page) => page.$$eval(".turn", (turns) => turns.map((t) => t.dataset.generationId));
const position = (page, id) => page.textContent(`${turn(id)} [data-testid=branch-position]`);

await scenario(async ({ page, shoot }) => {
  await signIn(page);
  const first = await send(page, env.PROMPT);
  await waitForStatus(page, first, "completed");
  const followUp = await send(page, env.FOLLOW_UP);
  await waitForStatus(page, followUp, "completed");
  assert.deepEqual(await shownTurns(page), [first, followUp], "the follow-up continues the thread");
  const followUpText = await rawText(page, followUp);

  // Regenerate the follow-up's answer: a new turn beside it, shown in its place, "2/2".
  await page.click(`${turn(followUp)} [data-testid=regenerate]`);
  await page.waitForFunction(
    ({ first, followUp }) => {
      const ids = [...document.querySelectorAll(".turn")].map((t) => t.dataset.generationId);
      return ids.length === 2 && ids[0] === first && ids[1] !== followUp;
    },
    { first, followUp },
  );
  const regenerated = (await shownTurns(page))[1];
  await waitForStatus(page, regenerated, "completed");
  assert.equal(await position(page, regenerated), "2/2");
  log("regenerated", followUp, "as", regenerated);

  // Back to the first answer: a request (PATCH), and the page shows what the server says.
  await page.click(`${turn(regenerated)} [data-testid=branch-prev]`);
  await page.waitForSelector(turn(followUp));
  await waitForStatus(page, followUp, "completed"); // its text is drawn on the next frame
  assert.equal(await position(page, followUp), "1/2");
  assert.equal(await rawText(page, followUp), followUpText);
  await shoot();

  // Edit the first prompt: a new first turn, "2/2", and the thread starts over from it.
  await page.click(`${turn(first)} [data-testid=edit]`);
  assert.equal(await page.isVisible("#editing"), true);
  await page.fill("#prompt", env.EDITED);
  await page.press("#prompt", "Enter");
  await page.waitForFunction(
    (first) => {
      const ids = [...document.querySelectorAll(".turn")].map((t) => t.dataset.generationId);
      return ids.length === 1 && ids[0] !== first;
    },
    first,
  );
  const edited = (await shownTurns(page))[0];
  await waitForStatus(page, edited, "completed");
  assert.equal(await position(page, edited), "2/2");
  assert.equal(await page.isVisible("#editing"), false);
  const conversationId = await page.getAttribute("#history button.active[data-conversation-id]", "data-conversation-id");
  writeResult({ conversation_id: conversationId, first, follow_up: followUp, regenerated, edited, follow_up_text: followUpText });
});
