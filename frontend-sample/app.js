// The sample chat page: sign in, chat (each conversation's history lives on the server, so a
// follow-up carries its context), regenerate or edit to branch and flip between branches, stop
// an answer, and reopen any conversation from the sidebar, on any device. Everything about connections (WebSocket, SSE fallback, reconnect, resume after
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
// The open conversation, so that a reload reopens it (its turns come from the server).
const CONVERSATION_KEY = "llm-sample:conversation";
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
/** The open conversation as the server last described it (null: a new chat). */
/** @type {import("./client.d.ts").ConversationView | null} */
let view = null;
/** @type {Map<string, Turn>} the turns shown: the current branch, first turn first */
const turns = new Map();
/** @type {import("./client.d.ts").Conversation[]} */
let conversationList = [];
/** Stops hearing of the open conversation's new turns. @type {(() => void) | null} */
let stopWatching = null;
/** Set while the user edits a prompt: the next message is a new branch after `parentId`. */
/** @type {{parentId: string | null} | null} */
let editing = null;

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
  newChat();
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
  /** @param {import("./client.d.ts").Generation} item */
  constructor(item) {
    this.id = item.id;
    this.prompt = item.prompt;
    this.parentId = item.parent_id ?? null;
    this.text = "";
    this.raw = false;
    /** @type {import("./client.d.ts").GenerationStream | null} */
    this.stream = null;
    this.pending = false;
    this.element = document.createElement("article");
    this.element.className = "turn";
    this.element.dataset.generationId = item.id;
    this.element.innerHTML = `
      <div class="user-row">
        <span class="branch-nav" data-testid="branches" hidden>
          <button type="button" class="link prev" data-testid="branch-prev" aria-label="Previous branch">‹</button>
          <span class="position" data-testid="branch-position"></span>
          <button type="button" class="link next" data-testid="branch-next" aria-label="Next branch">›</button>
        </span>
        <button type="button" class="link edit" data-testid="edit">Edit</button>
        <div class="bubble"></div>
      </div>
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
              <button type="button" class="link regenerate" data-testid="regenerate">Regenerate</button>
              <button type="button" class="link toggle-raw" data-testid="toggle-raw">Raw</button>
              <button type="button" class="link copy">Copy</button>
            </span>
          </div>
        </div>
      </div>`;
    this.$(".bubble").textContent = item.prompt; // the prompt is text, never HTML
    this.$(".toggle-raw").addEventListener("click", () => this.toggleRaw());
    this.$(".copy").addEventListener("click", () => navigator.clipboard?.writeText(this.text));
    this.$(".regenerate").addEventListener("click", () => regenerate(this));
    this.$(".edit").addEventListener("click", () => startEdit(this));
  }

  /**
   * Show "‹ n/m ›" when this turn has siblings (other answers to the same point: regenerations
   * and edits); the arrows switch the conversation to the sibling's branch.
   * @param {string[]} siblings ids, in the order they were created
   */
  setBranches(siblings) {
    const index = siblings.indexOf(this.id);
    const nav = this.$(".branch-nav");
    nav.hidden = siblings.length < 2;
    this.$(".position").textContent = `${index + 1}/${siblings.length}`;
    const prev = /** @type {HTMLButtonElement} */ (this.$(".prev"));
    const next = /** @type {HTMLButtonElement} */ (this.$(".next"));
    prev.disabled = index <= 0;
    next.disabled = index >= siblings.length - 1;
    prev.onclick = () => switchBranch(siblings[index - 1]);
    next.onclick = () => switchBranch(siblings[index + 1]);
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
        if (turn.element.dataset.status !== "running") turn.setStatus("running");
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

// -- the conversation (main pane) ------------------------------------------------------------

function clearThread() {
  for (const turn of turns.values()) turn.stream?.close();
  turns.clear();
  $("thread").replaceChildren($("empty"));
  $("empty").hidden = false;
}

/** A new chat: nothing shown; the first message starts a conversation on the server. */
function newChat() {
  stopWatching?.();
  stopWatching = null;
  view = null;
  cancelEdit();
  sessionStorage.removeItem(CONVERSATION_KEY);
  clearThread();
  $("chat-title").textContent = "New chat";
  markActiveHistory();
  updateStopButton();
}

/** @param {import("./client.d.ts").Generation} generation */
function addTurn(generation) {
  const turn = new Turn(generation);
  turns.set(generation.id, turn);
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

/**
 * Show a conversation as the server describes it: its current branch, each turn with its
 * sibling branches; a running answer streams (resuming from what this tab saved before a
 * reload), a finished one shows its stored output.
 * @param {import("./client.d.ts").ConversationView} next
 */
function showConversation(next) {
  const sameConversation = view?.id === next.id;
  view = next;
  sessionStorage.setItem(CONVERSATION_KEY, next.id);
  $("chat-title").textContent = next.title || "New chat";
  const byId = new Map(next.turns.map((generation) => [generation.id, generation]));
  clearThread();
  for (const id of next.current_path) {
    const generation = byId.get(id);
    if (!generation) continue;
    const turn = addTurn(generation);
    const siblings = next.turns.filter((other) => other.parent_id === generation.parent_id).map((other) => other.id);
    turn.setBranches(siblings);
    if (TERMINAL.has(generation.status)) turn.showFinal(generation);
    else watch(turn);
  }
  if (!sameConversation || !stopWatching) follow(next);
  markActiveHistory();
  updateStopButton();
  scrollDown();
}

/**
 * Hear of turns started elsewhere (another tab, browser or device): the conversation is read
 * again and the new turn streams here too.
 * @param {import("./client.d.ts").ConversationView} conversation
 */
function follow(conversation) {
  stopWatching?.();
  const id = conversation.id;
  stopWatching = client?.watchConversation(id, {
    after: conversation.turn_count,
    onTurn: (generation) => {
      if (view?.id !== id) return;
      refreshHistory();
      if (!turns.has(generation.id)) openConversation(id);
    },
    // Renamed, or switched to another branch, on another device; or deleted.
    onChange: (changed) => {
      refreshHistory();
      if (view?.id !== id) return;
      if (changed === null) newChat();
      else if (changed.current_turn_id !== view.current_path.at(-1)) openConversation(id);
      else $("chat-title").textContent = changed.title || "New chat";
    },
  }) ?? null;
}

/** @param {string} id */
async function openConversation(id) {
  if (!client) return;
  try {
    showConversation(await client.conversation(id));
  } catch (error) {
    if (error?.code === "not_found") newChat();
    else showBanner(error.message);
  }
}

/**
 * Send a message: a follow-up of the turn shown last (its context is built by the server),
 * or, while editing, a new branch beside the edited prompt.
 * @param {Event} [event]
 */
async function send(event) {
  event?.preventDefault();
  const input = /** @type {HTMLTextAreaElement} */ ($("prompt"));
  const prompt = input.value.trim();
  if (!prompt || !client) return;
  /** @type {import("./client.d.ts").GenerateParams} */
  const params = { prompt };
  if (view) {
    params.conversation_id = view.id;
    params.parent_id = editing ? editing.parentId : view.current_path.at(-1) ?? null;
  }
  const button = /** @type {HTMLButtonElement} */ ($("send"));
  button.disabled = true;
  try {
    const generation = await create(params);
    input.value = "";
    autosize();
    cancelEdit();
    if (generation.conversation_id) await openConversation(generation.conversation_id);
  } catch (error) {
    showBanner(error.message);
  } finally {
    button.disabled = false;
    input.focus();
  }
}

/** @param {import("./client.d.ts").GenerateParams} params */
async function create(params) {
  if (!client) throw new Error("signed out");
  const generation = await client.generate(params);
  refreshHistory();
  return generation;
}

/** Regenerate an answer: the same prompt again after the same parent, a new branch. @param {Turn} turn */
async function regenerate(turn) {
  if (!view) return;
  try {
    await create({ prompt: turn.prompt, conversation_id: view.id, parent_id: turn.parentId });
    await openConversation(view.id);
  } catch (error) {
    showBanner(error.message);
  }
}

/** Edit a prompt: the composer takes its text, and sending makes a new branch. @param {Turn} turn */
function startEdit(turn) {
  editing = { parentId: turn.parentId };
  const input = /** @type {HTMLTextAreaElement} */ ($("prompt"));
  input.value = turn.prompt;
  autosize();
  $("editing").hidden = false;
  input.focus();
}

function cancelEdit() {
  editing = null;
  $("editing").hidden = true;
}

/** Switch the conversation to another branch: a request, so every device agrees. @param {string} turnId */
async function switchBranch(turnId) {
  if (!view || !client) return;
  try {
    showConversation(await client.updateConversation(view.id, { current_turn_id: turnId }));
  } catch (error) {
    showBanner(error.message);
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

// -- conversations (sidebar) ---------------------------------------------------------------

async function refreshHistory() {
  if (!client) return;
  try {
    conversationList = (await client.conversations({ limit: 50 })).results;
  } catch (error) {
    if (!(error instanceof Error && error.message === "signed out")) showBanner(error.message);
    return;
  }
  const list = $("history");
  list.replaceChildren(
    ...conversationList.map((conversation) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.conversationId = conversation.id;
      const title = document.createElement("span");
      title.className = "title";
      title.textContent = (conversation.title || "New chat").replace(/\s+/g, " ").slice(0, 70);
      const meta = document.createElement("span");
      meta.className = "meta";
      const count = conversation.turn_count;
      meta.textContent = `${count} ${count === 1 ? "message" : "messages"} · ${when(conversation.updated_at)}`;
      button.append(title, meta);
      button.addEventListener("click", () => openConversation(conversation.id));
      item.append(button);
      return item;
    }),
  );
  $("history-empty").hidden = conversationList.length > 0;
  markActiveHistory();
}

function markActiveHistory() {
  for (const button of $("history").querySelectorAll("button")) {
    button.classList.toggle("active", button.dataset.conversationId === view?.id);
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
  const open = sessionStorage.getItem(CONVERSATION_KEY);
  if (open) openConversation(open);
  else newChat();
  refreshHistory();
  /** @type {HTMLTextAreaElement} */ ($("prompt")).focus();
}

$("signin-form").addEventListener("submit", signIn);
$("use-token").addEventListener("click", useToken);
$("sign-out").addEventListener("click", () => signOut());
$("new-chat").addEventListener("click", () => newChat());
$("cancel-edit").addEventListener("click", () => cancelEdit());
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
