// The Stop button cancels the generation: the answer stops, shows "Stopped", and keeps the
// text streamed before the stop (the same as the stored output).
import { assert, env, log, rawText, scenario, send, signIn, waitForStatus, waitForText, writeResult } from "./lib.mjs";

await scenario(async ({ page }) => {
  await signIn(page);
  const id = await send(page, env.PROMPT);
  await waitForText(page, id, 200);
  assert.equal(await page.isVisible("#stop"), true);
  await page.click("#stop");
  await waitForStatus(page, id, "cancelled", 15_000);
  assert.match(await page.textContent(`.turn[data-generation-id="${id}"] [data-testid=status]`), /^Stopped/);
  const text = await rawText(page, id);
  await page.waitForTimeout(500);
  assert.equal(await rawText(page, id), text, "nothing arrives after the stop");
  assert.equal(await page.isVisible("#send"), true, "Send is offered again");
  log(`stopped after ${text.length} characters`);
  writeResult({ id, text });
});
