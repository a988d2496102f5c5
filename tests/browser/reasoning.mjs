// A reasoning model: its thinking shows, while it streams, in a "Thinking" section of its own
// (plain text), and the answer beside it holds only the answer.
import { assert, env, log, rawText, scenario, send, signIn, turn, waitForStatus, writeResult } from "./lib.mjs";

await scenario(async ({ page }) => {
  await signIn(page);
  const id = await send(page, env.PROMPT);
  log("generation", id);
  const thinking = `${turn(id)} [data-testid=reasoning]`;

  // The thinking is seen growing before the answer starts.
  await page.waitForSelector(`${thinking}:not([hidden])`, { timeout: 30_000 });
  const early = await page.evaluate((selector) => {
    const root = document.querySelector(selector);
    return {
      thinking: root.querySelector(".thinking-text").textContent,
      answer: root.closest(".answer").querySelector("[data-testid=raw]").textContent,
    };
  }, thinking);
  log("thinking seen first:", early.thinking.length, "chars; answer so far:", early.answer.length);
  assert.ok(early.thinking.length > 0);

  await waitForStatus(page, id, "completed");
  await page.click(`${thinking} summary`);
  const reasoning = (await page.textContent(`${thinking} .thinking-text`)) ?? "";
  const elements = await page.locator(`${thinking} .thinking-text *`).count();
  await page.screenshot({ path: env.SCREENSHOT });
  writeResult({ id, reasoning, text: await rawText(page, id), early, elements });
});
