// Model output is untrusted: an answer with <script>, <img onerror>, javascript: links, SVG,
// an iframe, an overlay and a fake login form renders as inert text and Markdown.
//
// The page also has a Content-Security-Policy, which would stop inline script on its own; to
// prove the sanitiser and not only the policy, this checks the DOM itself (no script, no
// handler, no javascript: URL survived), and that the only reports of the policy come from
// DOMPurify's own parse of the dirty HTML (Chromium reports the handler attributes it sees in
// that inert document, which never runs them), never from the page's DOM.
import { assert, env, log, rawText, scenario, send, signIn, turn, waitForStatus, writeResult } from "./lib.mjs";

await scenario(async ({ page }) => {
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (event) =>
      window.__violations.push(`${event.violatedDirective} from ${event.sourceFile}`));
  });
  const outside = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(env.BASE_URL)) outside.push(request.url());
  });
  await signIn(page);
  log("signed in");
  const id = await send(page, env.PROMPT);
  log("sent");
  await waitForStatus(page, id, "completed");
  log("completed");
  const answer = page.locator(`${turn(id)} [data-testid=answer]`);

  const report = await answer.evaluate((root) => {
    const all = [...root.querySelectorAll("*")];
    return {
      tags: [...new Set(all.map((el) => el.tagName.toLowerCase()))].sort(),
      handlers: all.flatMap((el) => [...el.attributes].filter((a) => a.name.startsWith("on")).map((a) => `${el.tagName}.${a.name}`)),
      styled: all.filter((el) => el.hasAttribute("style")).length,
      hrefs: [...root.querySelectorAll("a")].map((a) => a.getAttribute("href")),
      text: root.innerText,
    };
  });
  log("tags rendered:", report.tags.join(" "));
  for (const tag of ["script", "img", "svg", "iframe", "form", "input", "button", "style", "object", "embed"]) {
    assert.ok(!report.tags.includes(tag), `no <${tag}> from the model`);
  }
  assert.deepEqual(report.handlers, [], "no event handler attributes");
  assert.equal(report.styled, 0, "no style attributes (no overlay)");
  for (const href of report.hrefs.filter(Boolean)) assert.match(href, /^(https?:|mailto:|#)/i, `a safe link: ${href}`);
  assert.ok(report.hrefs.includes("https://tracker.invalid/pixel.png"), "the image became a link, not a fetch");

  // The harmless parts still read well.
  assert.ok(report.text.includes("This bold text is harmless and stays."));
  assert.equal(await answer.locator("strong").count(), 1);
  for (const label of ["a javascript link", "a raw javascript link", "a mixed-case link", "a data link"]) {
    assert.ok(report.text.includes(label), `"${label}" shows as text`);
  }

  log("checked the DOM");
  // Clicking the would-be javascript: links and hovering the would-be overlay does nothing.
  for (const label of ["a javascript link", "a raw javascript link", "a mixed-case link"]) {
    await answer.getByText(label, { exact: true }).click();
  }
  await answer.getByText("an overlay").hover();
  await page.waitForTimeout(300);
  assert.equal(await page.evaluate(() => window.__xss), undefined, "no script of the model ran");
  const violations = await page.evaluate(() => window.__violations);
  assert.deepEqual(violations.filter((v) => !v.endsWith("/sample/vendor/purify.es.mjs")), [], "the CSP never had to step in");
  assert.deepEqual(outside, [], "nothing was fetched from elsewhere");
  assert.equal(page.url(), env.BASE_URL + "/", "still on the page");
  writeResult({ id, text: await rawText(page, id) });
});
