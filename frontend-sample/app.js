// The sample chat page: sign in, send a prompt, watch it stream, stop it, browse past
// generations. Everything about connections (WebSocket, SSE fallback, reconnect, resume after
// a reload, token refresh) is in client.js; this file is only the page.
//
// Embedding hooks (optional, set before this script runs, e.g. in a script file of your own):
//   window.LLM_SAMPLE = {
//     token: ({ force }) => myApp.getAccessToken(),  // your auth instead of the sign-in form
//     wsUrl: "wss://...", sse: "fetch" | "eventsource", baseUrl: "https://...",
//   };

import { StreamClient } from "./client.js";
import { renderMarkdown } from "./markdown.js";

/** @type {{token?: import("./client.d.ts").TokenProvider, wsUrl?: string, sse?: "fetch" | "eventsource", baseUrl?: string}} */
const config = /** @type {any} */ (window).LLM_SAMPLE ?? {};
const TOKEN_KEY = "llm-sample:token";
const THREAD_KEY = "llm-sample:thread";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STATE_LABELS = {
  idle: "Not connected",
  connecting: "Connecting…",
  websocket: "WebSocket",
  sse: "SSE",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};
const STATE_HINTS = {
  websocket: "Streaming over the WebSocket (/ws/v1).",
  sse: "The WebSocket cannot connect here: streaming over Server-Sent Events.",
  reconnecting: "The connection dropped; resuming from the last event received.",
  offline: "The browser is offline; the stream resumes when the network is back.",
};

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** @type {StreamClient | null} */
let client = null;
/** The generations shown in the main pane: [{id, prompt}], kept across reloads. */
let thread = loadThread();
/** @type {Map<string, Turn>} */
const turns = new Map();
/** @type {import("./client.d.ts").Generation[]} */
let history = [];

// -- authentication ------------------------------------------------------------------------

/** Claims of a JWT (unverified: only to show the user name and know when it expires). */
function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

/** The token provider for the sign-in form's token (it cannot be renewed without the password). */
async function storedToken() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const exp = token ? claims(token).exp : 0;
  if (!token || (exp && exp * 1000 < Date.now())) {
    signOut("Your session has expired. Please sign in again.");
    throw new Error("signed out");
  }
  return token;
}

async function signIn(event) {
  event.preventDefault();
  const button = /** @type {HTMLButtonElement} */ ($("signin-button"));
  button.disabled = true;
  $("signin-error").textContent = "";
  try {
    const response = await fetch("/api/v1/auth/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        username: /** @type {HTMLInputElement} */ ($("username")).value,
        password: /** @type {HTMLInputElement} */ ($("password")).value,
      }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body?.error?.message ?? "Sign-in failed.");
    sessionStorage.setItem(TOKEN_KEY, body.access_token);
    /** @type {HTMLInputElement} */ ($("password")).value = "";
    start();
  } catch (error) {
    $("signin-error").textContent = error instanceof TypeError ? "The service cannot be reached." : error.message;
  } finally {
    button.disabled = false;
  }
}

function useToken() {
  const token = /** @type {HTMLTextAreaElement} */ ($("token-input")).value.trim();
  if (!claims(token).sub) {
    $("signin-error").textContent = "That does not look like a token.";
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  start();
}

function signOut(message = "") {
  client?.close();
  client = null;
  sessionStorage.removeItem(TOKEN_KEY);
  setThread([]);
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = message;
}

// -- connection state ----------------------------------------------------------------------

function showState(state) {
  const badge = $("connection");
  badge.dataset.state = state;
  badge.querySelector(".label").textContent = STATE_LABELS[state] ?? state;
  badge.title = STATE_HINTS[state] ?? "";
}

// -- one question and its answer -----------------------------------------------------------

class Turn {
  /** @param {{id: string, prompt: string}} item */
  constructor(item) {
    this.id = item.id;
    this.text = "";
    this.raw = false;
    /** @type {import("./client.d.ts").GenerationStream | null} */
    this.stream = null;
    this.pending = false;
    this.element = document.createElement("article");
    this.element.className = "turn";
    this.element.dataset.generationId = item.id;
    this.element.innerHTML = `
      <div class="user-row"><div class="bubble"></div></div>
      <div class="answer-row">
        <div class="avatar" aria-hidden="true">AI</div>
        <div class="answer">
          <details class="thinking" data-testid="reasoning" hidden>
            <summary>Thinking</summary>
            <pre class="thinking-text"></pre>
          </details>
          <div class="markdown" data-testid="answer"></div>
          <pre class="raw" data-testid="raw" hidden></pre>
          <div class="answer-meta">
            <span class="status" data-testid="status"></span>
            <span class="actions">
              <button type="button" class="link toggle-raw" data-testid="toggle-raw">Raw</button>
              <button type="button" class="link copy">Copy</button>
            </span>
          </div>
        </div>
      </div>`;
    this.$(".bubble").textContent = item.prompt; // the prompt is text, never HTML
    this.$(".toggle-raw").addEventListener("click", () => this.toggleRaw());
    this.$(".copy").addEventListener("click", () => navigator.clipboard?.writeText(this.text));
  }

  /** @param {string} selector */
  $(selector) {
    return /** @type {HTMLElement} */ (this.element.querySelector(selector));
  }

  /** Show `text`; rendering waits for the next frame so a fast stream costs one render per frame. */
  setText(text) {
    this.text = text;
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      const follow = isScrolledDown();
      renderMarkdown(this.$(".markdown"), this.text);
      this.$(".raw").textContent = this.text;
      if (follow) scrollDown();
    });
  }

  /** A reasoning model's thinking, as plain text (untrusted, like the answer); hidden when none. */
  setReasoning(reasoning) {
    const details = this.$(".thinking");
    details.hidden = !reasoning;
    const text$ = this.$(".thinking-text");
    if (text$.textContent !== reasoning) text$.textContent = reasoning;
  }

  toggleRaw() {
    this.raw = !this.raw;
    this.$(".markdown").hidden = this.raw;
    this.$(".raw").hidden = !this.raw;
    this.$(".toggle-raw").textContent = this.raw ? "Markdown" : "Raw";
  }

  /** @param {string} status @param {string} [detail] */
  setStatus(status, detail = "") {
    this.element.dataset.status = status;
    this.$(".markdown").classList.toggle("streaming", status === "queued" || status === "running");
    const labels = { queued: "Waiting for the model…", running: "Streaming…", completed: "Completed", failed: "Failed", cancelled: "Stopped" };
    const status$ = this.$(".status");
    status$.textContent = [labels[status] ?? status, detail].filter(Boolean).join(" · ");
    status$.dataset.status = status;
    updateStopButton();
  }

  /** @param {import("./client.d.ts").Generation} generation */
  showFinal(generation) {
    this.setText(generation.output);
    this.setReasoning(generation.reasoning ?? "");
    const detail = [
      generation.usage ? `${generation.usage.completion_tokens} tokens` : "",
      generation.model,
      generation.error?.message ?? "",
    ];
    this.setStatus(generation.status, detail.filter(Boolean).join(" · "));
  }

  get running() {
    const status = this.element.dataset.status;
    return status === "queued" || status === "running";
  }
}

/** Watch a generation in `turn`; resumes from this tab's saved position after a reload. */
function watch(turn) {
  if (!client) return;
  turn.setStatus("queued");
  const startedAt = performance.now();
  turn.stream = client.subscribe(turn.id, {
    onUpdate: ({ text, event, reasoning }) => {
      turn.setText(text);
      turn.setReasoning(reasoning ?? "");
      const streaming = event?.type === "delta" || event?.type === "reasoning";
      if (streaming || (event?.type === "snapshot" && event.status === "running")) {
        if (turn.element.dataset.status !== "running") {
          turn.setStatus("running");
          setHistoryStatus(turn.id, "running");
        }
      }
    },
    onDone: (done) => {
      const seconds = ((performance.now() - startedAt) / 1000).toFixed(1);
      const detail = [done.usage ? `${done.usage.completion_tokens} tokens` : "", `${seconds} s`, done.error?.message ?? ""];
      turn.setStatus(done.status, detail.filter(Boolean).join(" · "));
      turn.stream = null;
      refreshHistory();
    },
    onError: (error) => {
      turn.setStatus("failed", error.message);
      turn.stream = null;
    },
  });
}

// -- the thread (main pane) ----------------------------------------------------------------

function loadThread() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(THREAD_KEY) ?? "[]");
    return Array.isArray(saved) ? saved : [];
  } catch {
    return [];
  }
}

/** @param {{id: string, prompt: string}[]} items */
function setThread(items) {
  for (const turn of turns.values()) turn.stream?.close();
  turns.clear();
  thread = items;
  sessionStorage.setItem(THREAD_KEY, JSON.stringify(thread));
  $("thread").replaceChildren($("empty"));
  $("empty").hidden = thread.length > 0;
  $("chat-title").textContent = thread.length ? thread[0].prompt.slice(0, 80) : "New chat";
  markActiveHistory();
  updateStopButton();
}

/** @param {{id: string, prompt: string}} item */
function addTurn(item) {
  const turn = new Turn(item);
  turns.set(item.id, turn);
  $("thread").append(turn.element);
  $("empty").hidden = true;
  return turn;
}

function isScrolledDown() {
  const pane = $("thread");
  return pane.scrollHeight - pane.scrollTop - pane.clientHeight < 80;
}

function scrollDown() {
  const pane = $("thread");
  pane.scrollTop = pane.scrollHeight;
}

/** Rebuild the thread after a reload: saved streams resume at once, the rest load from the API. */
function restoreThread() {
  const streaming = new Set(client?.savedStreams() ?? []);
  const items = thread;
  setThread(items);
  for (const item of items) {
    const turn = addTurn(item);
    if (streaming.has(item.id)) {
      watch(turn); // shows the saved text now, then continues after its seq
    } else {
      client?.get(item.id).then(
        (generation) => (TERMINAL.has(generation.status) ? turn.showFinal(generation) : watch(turn)),
        (error) => turn.setStatus("failed", error.message),
      );
    }
  }
  scrollDown();
}

/** @param {import("./client.d.ts").Generation} generation */
function openGeneration(generation) {
  // From the history list, which came from the database: shown at once, no request.
  setThread([{ id: generation.id, prompt: generation.prompt }]);
  const turn = addTurn(generation);
  if (TERMINAL.has(generation.status)) turn.showFinal(generation);
  else watch(turn);
  markActiveHistory();
  $("thread").scrollTop = 0;
}

async function send(event) {
  event?.preventDefault();
  const input = /** @type {HTMLTextAreaElement} */ ($("prompt"));
  const prompt = input.value.trim();
  if (!prompt || !client) return;
  const button = /** @type {HTMLButtonElement} */ ($("send"));
  button.disabled = true;
  try {
    const generation = await client.generate({ prompt });
    input.value = "";
    autosize();
    const item = { id: generation.id, prompt: generation.prompt };
    thread = [...thread, item];
    sessionStorage.setItem(THREAD_KEY, JSON.stringify(thread));
    if (thread.length === 1) $("chat-title").textContent = item.prompt.slice(0, 80);
    const turn = addTurn(item);
    watch(turn);
    scrollDown();
    refreshHistory();
  } catch (error) {
    showBanner(error.message);
  } finally {
    button.disabled = false;
    input.focus();
  }
}

function stop() {
  const running = [...turns.values()].filter((turn) => turn.running);
  for (const turn of running) {
    client?.cancel(turn.id).catch((error) => showBanner(error.message));
  }
}

function updateStopButton() {
  const running = [...turns.values()].some((turn) => turn.running);
  $("stop").hidden = !running;
  $("send").hidden = running;
}

function showBanner(message) {
  const banner = $("banner");
  banner.textContent = message;
  banner.hidden = !message;
  clearTimeout(showBanner.timer);
  if (message) showBanner.timer = setTimeout(() => (banner.hidden = true), 6000);
}
showBanner.timer = 0;

// -- history (sidebar) ---------------------------------------------------------------------

async function refreshHistory() {
  if (!client) return;
  try {
    history = (await client.list({ limit: 50 })).results;
  } catch (error) {
    if (!(error instanceof Error && error.message === "signed out")) showBanner(error.message);
    return;
  }
  const list = $("history");
  list.replaceChildren(
    ...history.map((generation) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.generationId = generation.id;
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = generation.prompt.replace(/\s+/g, " ").slice(0, 70);
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.dataset.status = generation.status;
      meta.textContent = `${generation.status} · ${when(generation.created_at)}`;
      button.append(title, meta);
      button.addEventListener("click", () => openGeneration(generation));
      item.append(button);
      return item;
    }),
  );
  $("history-empty").hidden = history.length > 0;
  markActiveHistory();
}

/** @param {string} id @param {string} status */
function setHistoryStatus(id, status) {
  const meta = $("history").querySelector(`button[data-generation-id="${CSS.escape(id)}"] .meta`);
  const generation = history.find((g) => g.id === id);
  if (!meta || !generation) return;
  meta.dataset.status = status;
  meta.textContent = `${status} · ${when(generation.created_at)}`;
}

function markActiveHistory() {
  for (const button of $("history").querySelectorAll("button")) {
    button.classList.toggle("active", thread.some((item) => item.id === button.dataset.generationId));
  }
}

function when(iso) {
  const date = new Date(iso);
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { day: "numeric", month: "short" });
}

// -- composer ------------------------------------------------------------------------------

function autosize() {
  const input = /** @type {HTMLTextAreaElement} */ ($("prompt"));
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight, 200) + "px";
}

// -- start ---------------------------------------------------------------------------------

function start() {
  $("signin").hidden = true;
  $("app").hidden = false;
  client?.close();
  client = new StreamClient({
    token: config.token ?? storedToken,
    baseUrl: config.baseUrl,
    wsUrl: config.wsUrl,
    sse: config.sse,
    onStateChange: showState,
    onError: (error) => showBanner(error.message),
  });
  const token = config.token ? null : sessionStorage.getItem(TOKEN_KEY);
  $("account-name").textContent = token ? claims(token).sub ?? "" : "";
  client.getToken().then((value) => ($("account-name").textContent = claims(value).sub ?? ""), () => {});
  client.connect();
  restoreThread();
  refreshHistory();
  /** @type {HTMLTextAreaElement} */ ($("prompt")).focus();
}

$("signin-form").addEventListener("submit", signIn);
$("use-token").addEventListener("click", useToken);
$("sign-out").addEventListener("click", () => signOut());
$("new-chat").addEventListener("click", () => setThread([]));
$("composer").addEventListener("submit", send);
$("stop").addEventListener("click", stop);
$("prompt").addEventListener("input", autosize);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
});
for (const example of document.querySelectorAll("[data-example]")) {
  example.addEventListener("click", () => {
    /** @type {HTMLTextAreaElement} */ ($("prompt")).value = example.textContent ?? "";
    send();
  });
}

if (config.token || sessionStorage.getItem(TOKEN_KEY)) start();
else $("signin").hidden = false;
