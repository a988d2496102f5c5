// Shared by the browser scenarios: Debian's Chromium through playwright-core, the sample page's
// selectors, and the result file that test_browser.py reads back.
//
// Environment (set by test_browser.py): BASE_URL, USERNAME, PASSWORD, SCREENSHOT (a .png path),
// RESULT_FILE (JSON written at the end), and per scenario extras.

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { chromium } from "playwright-core";

export { assert };
export const env = process.env;
export const BASE_URL = env.BASE_URL ?? "http://127.0.0.1:8000";
const CHROMIUM = env.CHROMIUM ?? "/usr/bin/chromium";
// A scenario that hangs fails rather than holding the suite: pytest's own timeout is longer.
const SCENARIO_TIMEOUT_MS = Number(env.SCENARIO_TIMEOUT_MS ?? 90_000);

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Wait for `condition()` (checked here, in Node) to be true. */
export async function until(condition, what, timeout = 15_000) {
  const deadline = Date.now() + timeout;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

export function log(...parts) {
  console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...parts);
}

/**
 * Run `body({browser, context, page, problems, shoot})` in a fresh headless Chromium (a fresh
 * profile, no background traffic). The screenshot (SCREENSHOT) is taken at the end, unless the
 * body took it at a better moment with `shoot()`; a failure always takes it, as it failed.
 */
export async function scenario(body, { contextOptions = {} } = {}) {
  const timer = setTimeout(() => {
    console.error(`scenario timed out after ${SCENARIO_TIMEOUT_MS} ms`);
    process.exit(2);
  }, SCENARIO_TIMEOUT_MS);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
      "--no-first-run", "--disable-component-update", "--disable-sync",
    ],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...contextOptions });
  // Every WebSocket frame the service sends to the page (and to pages it opens), written to
  // FRAMES_FILE at the end; test_browser.py checks each against its model (tests/wire.py).
  const framesReceived = [];
  const watchFrames = (opened) =>
    opened.on("websocket", (ws) => ws.on("framereceived", ({ payload }) => framesReceived.push(String(payload))));
  context.on("page", watchFrames);
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (env.BROWSER_CONSOLE) log("console:", message.type(), message.text());
  });
  page.on("dialog", (dialog) => {
    problems.push(`dialog opened: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  let failed = null;
  let shot = false;
  const shoot = async () => {
    if (env.SCREENSHOT) await page.screenshot({ path: env.SCREENSHOT });
    shot = true;
  };
  try {
    await body({ browser, context, page, problems, shoot });
    assert.deepEqual(problems, [], "the page raised errors or opened dialogs");
  } catch (error) {
    failed = error;
  }
  if (env.SCREENSHOT && (failed || !shot)) {
    await page.screenshot({ path: env.SCREENSHOT }).catch((error) => log("no screenshot:", error.message));
  }
  await browser.close();
  clearTimeout(timer);
  if (env.FRAMES_FILE) writeFileSync(env.FRAMES_FILE, JSON.stringify(framesReceived));
  if (failed) {
    console.error(failed);
    process.exit(1);
  }
  log("passed");
}

/** Sign in through the page's form. */
export async function signIn(page, username = env.USERNAME, password = env.PASSWORD) {
  await page.goto(BASE_URL + "/");
  await page.fill("#username", username);
  await page.fill("#password", password);
  await page.click("#signin-button");
  await page.waitForSelector("#app:not([hidden])");
}

/** The connection badge's state: idle, connecting, websocket, sse, reconnecting, offline. */
export async function connectionState(page) {
  return page.getAttribute("#connection", "data-state");
}

export async function waitForState(page, state, timeout = 15_000) {
  await page.waitForSelector(`#connection[data-state="${state}"]`, { timeout });
}

/** Record every state the badge shows from now on (read it with `states(page)`). */
export async function recordStates(page) {
  await page.evaluate(() => {
    const badge = document.getElementById("connection");
    window.__states = [badge.dataset.state];
    new MutationObserver(() => window.__states.push(badge.dataset.state)).observe(badge, {
      attributes: true,
      attributeFilter: ["data-state"],
    });
  });
}

export const states = (page) => page.evaluate(() => window.__states ?? []);

/** Type a prompt, send it with Enter, and return the id of the new generation. */
export async function send(page, prompt) {
  const before = await page.$$eval(".turn", (turns) => turns.map((t) => t.dataset.generationId));
  await page.fill("#prompt", prompt);
  await page.press("#prompt", "Enter");
  const handle = await page.waitForFunction(
    (known) => [...document.querySelectorAll(".turn")].map((t) => t.dataset.generationId).find((id) => !known.includes(id)),
    before,
  );
  return handle.jsonValue();
}

export const turn = (id) => `.turn[data-generation-id="${id}"]`;

/** The answer's raw text (the Markdown source the page holds, exactly). */
export async function rawText(page, id) {
  return (await page.textContent(`${turn(id)} [data-testid=raw]`)) ?? "";
}

/** The answer as the reader sees it (the rendered Markdown's text). */
export async function renderedText(page, id) {
  return page.innerText(`${turn(id)} [data-testid=answer]`);
}

export async function waitForStatus(page, id, status, timeout = 60_000) {
  await page.waitForSelector(`${turn(id)}[data-status="${status}"]`, { timeout });
  await nextFrames(page); // the last render waits for an animation frame
}

export async function waitForText(page, id, minLength, timeout = 30_000) {
  await page.waitForFunction(
    ({ selector, minLength }) => (document.querySelector(selector)?.textContent ?? "").length >= minLength,
    { selector: `${turn(id)} [data-testid=raw]`, minLength },
    { timeout },
  );
}

export const nextFrames = (page) =>
  page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));

/** Every WebSocket the page opens, with the frames it sent and received (parsed JSON). */
export function watchSockets(page) {
  const sockets = [];
  page.on("websocket", (ws) => {
    const record = { url: ws.url(), sent: [], received: [], closed: false };
    sockets.push(record);
    ws.on("framesent", ({ payload }) => record.sent.push(parse(payload)));
    ws.on("framereceived", ({ payload }) => record.received.push(parse(payload)));
    ws.on("close", () => (record.closed = true));
  });
  return sockets;
}

function parse(payload) {
  try {
    return JSON.parse(String(payload));
  } catch {
    return { raw: String(payload) };
  }
}

export function writeResult(result) {
  if (env.RESULT_FILE) writeFileSync(env.RESULT_FILE, JSON.stringify(result, null, 2));
}
