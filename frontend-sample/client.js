// A browser client for the LLM stream service: the resilient path, in a few lines.
//
//   import { StreamClient } from "/sample/client.js";
//   const client = new StreamClient({ token: () => myApp.getAccessToken() });
//   const stream = await client.stream({ prompt: "Why is the sky blue?" });
//   for await (const { text } of stream) output.textContent = text;
//
// - WebSocket first (/ws/v1, the JWT in the first frame); Server-Sent Events when the WebSocket
//   cannot connect (fetch streaming with the Authorization header, or the browser's EventSource
//   with a one-generation ticket); the WebSocket is probed again in the background and takes
//   the streams back when it works.
// - Reconnects with exponential backoff and jitter after any drop (network loss, Daphne's 1001
//   on restart, 4008 for a slow reader, ...) and resumes every stream after its last seq.
// - Keeps each stream's last seq and text in sessionStorage, so a page reload resumes the same
//   generation where it was, with nothing lost or doubled (docs/protocol.md §3).
// - Calls the token provider again before the JWT expires and re-authenticates on the open
//   socket, so a long stream never breaks for a token.
//
// Plain ES module, no dependencies, no build step; types in client.d.ts. The wire contract is
// docs/protocol.md; the guide is docs/browser-client.md.

const STORAGE_PREFIX = "llm-stream:";
const MAX_SAVED_STREAMS = 50; // sessionStorage is small (~5 MB); the oldest entries go first
// `reasoning` (protocol v1.1): a reasoning model's thinking, in the same seq space as `delta`.
const EVENT_TYPES = new Set(["snapshot", "delta", "reasoning", "reset", "done"]);
// The server's SSE endpoint sends `: ping` every 10 s while idle (docs/protocol.md, SSE): a
// response silent for 3 pings is a dead connection that TCP has not noticed yet.
const SSE_SILENCE_MS = 35_000;
// A stream resumed from a saved seq whose generation had already ended gets `subscribed` and
// nothing more over the WebSocket; after this long without an event its row is checked.
const RESUME_CHECK_MS = 1500;

/** @typedef {import("./client.d.ts").StreamClientOptions} StreamClientOptions */
/** @typedef {import("./client.d.ts").ConnectionState} ConnectionState */
/** @typedef {import("./client.d.ts").Generation} Generation */
/** @typedef {import("./client.d.ts").GenerateParams} GenerateParams */
/** @typedef {import("./client.d.ts").StreamEvent} StreamEvent */
/** @typedef {import("./client.d.ts").DoneEvent} DoneEvent */
/** @typedef {import("./client.d.ts").StreamUpdate} StreamUpdate */
/** @typedef {import("./client.d.ts").SubscribeOptions} SubscribeOptions */

/** An error from the service (its JSON error body) or from the client itself. */
export class ApiError extends Error {
  /**
   * @param {string} code the REST error code (`not_found`, `unauthorized`, ...) or `network_error`
   * @param {string} message
   * @param {{status?: number, details?: object, retryAfter?: number | null}} [extra]
   */
  constructor(code, message, { status = 0, details = {}, retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.status = status;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/** Milliseconds to wait before retry number `attempt` (0-based): exponential, with jitter. */
export function backoffDelay(attempt, initialMs = 500, maxMs = 15_000) {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 16));
  // "Equal jitter": never less than half the ceiling (no hammering), never in lockstep with
  // every other client that lost the same server at the same moment.
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** The `exp` and `iat` claims of a JWT in ms, or null for an opaque token. */
function jwtTimes(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    if (typeof claims.exp !== "number") return null;
    return { exp: claims.exp * 1000, iat: typeof claims.iat === "number" ? claims.iat * 1000 : null };
  } catch {
    return null;
  }
}

/** A random key for `Idempotency-Key` (crypto.randomUUID exists only in secure contexts). */
function randomKey() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  const bytes = globalThis.crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Parses a text/event-stream body incrementally (the WHATWG "event stream" rules). */
class SseParser {
  /** @param {(type: string, data: string, id: string | null) => void} onEvent */
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = "";
    this.data = [];
    this.type = "";
    this.id = null;
  }

  /** @param {string} chunk */
  push(chunk) {
    let text = this.buffer + chunk;
    // A trailing \r may be the first half of a \r\n split across two chunks: keep it back.
    const held = text.endsWith("\r") ? "\r" : "";
    if (held) text = text.slice(0, -1);
    const lines = text.split(/\r\n|\n|\r/);
    this.buffer = (lines.pop() ?? "") + held; // an unfinished line
    for (const line of lines) this.#line(line);
  }

  #line(line) {
    if (line === "") {
      if (this.data.length) this.onEvent(this.type || "message", this.data.join("\n"), this.id);
      this.data = [];
      this.type = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment (`: ping`)
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id") this.id = value;
  }
}

/**
 * One generation being watched. Its `text` is always the fold of what arrived (docs/protocol.md
 * §3); iterate it with `for await`, or pass callbacks to `subscribe`.
 */
export class GenerationStream {
  /**
   * @param {StreamClient} client
   * @param {string} id
   * @param {{seq: number, text: string, status: string | null, reasoning?: string}} start
   * @param {SubscribeOptions} handlers
   */
  constructor(client, id, start, handlers) {
    this.#client = client;
    /** The generation id. */
    this.id = id;
    /** The text so far: the fold of every event applied (snapshot, delta, reset). */
    this.text = start.text;
    /** The model's reasoning so far ("" for a model that sends none); never part of `text`. */
    this.reasoning = start.reasoning ?? "";
    /** The seq of the last event applied: where a reconnect resumes. */
    this.seq = start.seq;
    /** queued | running | completed | failed | cancelled, as last seen (null until known). */
    this.status = start.status;
    /** @type {DoneEvent | null} the `done` event, once it arrived */
    this.result = null;
    /** True once `done` arrived, the stream failed, or `close()` was called. */
    this.finished = false;
    /** @type {"websocket" | "sse" | null} the transport this stream is on right now */
    this.transport = null;
    this.handlers = handlers;
    /** Resolves with the `done` event; rejects with an ApiError if the stream cannot go on. */
    this.done = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(() => {}); // callers that only use callbacks must not see "unhandled"
    // Transport bookkeeping, owned by the client.
    /** @type {{abort: () => void, connected: boolean} | null} */
    this.sse = null;
    this.sseFailures = 0;
    this.authFailures = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.retryTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.resumeCheck = undefined;
    /** @type {{value: string, expiresAt: number, failures: number} | null} the SSE ticket (EventSource) */
    this.ticket = null;
  }

  #client;
  #resolve = /** @type {(done: DoneEvent) => void} */ (() => {});
  #reject = /** @type {(error: Error) => void} */ (() => {});
  /** @type {StreamUpdate[]} */
  #queue = [];
  /** @type {{resolve: (r: IteratorResult<StreamUpdate>) => void, reject: (e: Error) => void} | null} */
  #waiting = null;
  /** @type {Error | null} */
  #error = null;

  /** Stop watching (the generation itself goes on; see `client.cancel` to stop it). */
  close() {
    if (this.finished) return;
    this.#client._unsubscribe(this);
    this._end(new ApiError("closed", "The stream was closed."));
  }

  /** @param {StreamUpdate} update @internal */
  _push(update) {
    this.handlers.onUpdate?.(update);
    if (this.#waiting) {
      const waiting = this.#waiting;
      this.#waiting = null;
      waiting.resolve({ value: update, done: false });
    } else {
      this.#queue.push(update);
    }
  }

  /** @param {Error | null} error @internal */
  _end(error) {
    if (this.finished) return;
    this.finished = true;
    this.transport = null;
    const closed = error instanceof ApiError && error.code === "closed";
    if (error) {
      this.#reject(error);
      if (!closed) {
        this.#error = error; // the iterator throws it after the updates that came before
        this.handlers.onError?.(error);
      }
    } else if (this.result) {
      this.#resolve(this.result);
      this.handlers.onDone?.(this.result);
    }
    if (this.#waiting) {
      const waiting = this.#waiting;
      this.#waiting = null;
      this.#next().then(waiting.resolve, waiting.reject);
    }
  }

  /** @returns {Promise<IteratorResult<StreamUpdate>>} */
  #next() {
    const item = this.#queue.shift();
    if (item) return Promise.resolve({ value: item, done: false });
    if (this.#error) {
      const error = this.#error;
      this.#error = null; // thrown once; the iterator is over after it
      return Promise.reject(error);
    }
    if (this.finished) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.#waiting = { resolve, reject };
    });
  }

  /** Every update until `done`: `{text, delta, replaced, event}`. Throws if the stream fails. */
  [Symbol.asyncIterator]() {
    return {
      next: () => this.#next(),
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }
}

export class StreamClient {
  /** @param {StreamClientOptions} options */
  constructor(options) {
    if (!options || typeof options.token !== "function") {
      throw new TypeError("StreamClient needs a token provider: new StreamClient({ token: () => jwt })");
    }
    const location = globalThis.location;
    this.baseUrl = (options.baseUrl ?? "").replace(/\/$/, "");
    const httpBase = this.baseUrl || (location ? location.origin : "");
    this.wsUrl = options.wsUrl ?? httpBase.replace(/^http/, "ws") + "/ws/v1";
    this.transports = options.transports ?? ["websocket", "sse"];
    this.sseMode = options.sse ?? "fetch";
    this.storage = options.storage === undefined ? safeSessionStorage() : options.storage;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 8000;
    this.heartbeatMs = options.heartbeatMs ?? 25_000;
    this.reconnect = { initialDelayMs: 500, maxDelayMs: 15_000, ...(options.reconnect ?? {}) };
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.#tokenProvider = options.token;
    if (options.onStateChange) this.on("state", options.onStateChange);
    if (options.onError) this.on("error", options.onError);
    this.#online = globalThis.navigator?.onLine ?? true;
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("offline", this.#onOffline);
      globalThis.addEventListener("online", this.#onOnline);
    }
  }

  // -- state ------------------------------------------------------------------------------

  /** @type {ConnectionState} */
  state = "idle";
  /** @type {Map<string, Set<Function>>} */
  #listeners = new Map();
  /** @type {Map<string, GenerationStream>} */
  #streams = new Map();
  #closed = false;
  #online = true;

  /**
   * Listen to `state` (ConnectionState changes) or `error` (ApiError the client could not
   * attach to one stream, e.g. a token provider that keeps failing). Returns `off()`.
   * @param {"state" | "error"} event
   * @param {(value: any) => void} listener
   */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event)?.add(listener);
    return () => this.#listeners.get(event)?.delete(listener);
  }

  #emit(event, value) {
    for (const listener of this.#listeners.get(event) ?? []) {
      try {
        listener(value);
      } catch (error) {
        console.error(error);
      }
    }
  }

  #updateState() {
    /** @type {ConnectionState} */
    let state;
    if (this.#closed) state = "idle";
    else if (!this.#online) state = "offline";
    else if (this.#wsOpen) state = "websocket";
    else if (this.#wsFailures > 0 || !this.transports.includes("websocket")) {
      // The WebSocket is unavailable: SSE carries the streams. "reconnecting" while some
      // stream has no SSE connection either.
      const streams = [...this.#streams.values()];
      state = streams.some((s) => !s.sse?.connected) ? "reconnecting" : "sse";
    } else state = this.#everConnected ? "reconnecting" : "connecting";
    if (state !== this.state) {
      this.state = state;
      this.#emit("state", state);
    }
  }

  // -- tokens -----------------------------------------------------------------------------

  #tokenProvider;
  /** @type {{value: string, refreshAt: number} | null} */
  #token = null;
  /** @type {Promise<string> | null} */
  #tokenPending = null;

  /**
   * A token from the provider, cached until shortly before it expires (a quarter of its
   * lifetime, between 2 s and 60 s before `exp`). `force` asks the provider again.
   * @param {boolean} [force]
   * @returns {Promise<string>}
   */
  async getToken(force = false) {
    if (!force && this.#token && Date.now() < this.#token.refreshAt) return this.#token.value;
    if (!this.#tokenPending) {
      this.#tokenPending = (async () => {
        try {
          const value = await this.#tokenProvider({ force });
          if (typeof value !== "string" || !value) throw new ApiError("unauthorized", "The token provider gave no token.");
          this.#token = { value, refreshAt: refreshTime(value) };
          return value;
        } finally {
          this.#tokenPending = null;
        }
      })();
    }
    return this.#tokenPending;
  }

  // -- REST -------------------------------------------------------------------------------

  /**
   * A JSON request to the API with the bearer token. Retries network errors, 5xx and 429
   * (after `Retry-After`) for requests that are safe to repeat: GET, cancel, and POSTs with an
   * `Idempotency-Key`. A 401 asks the token provider once more.
   * @param {string} method
   * @param {string} path e.g. "/api/v1/me"
   * @param {{body?: unknown, headers?: Record<string, string>, retries?: number}} [options]
   */
  async request(method, path, { body, headers = {}, retries } = {}) {
    const repeatable = method === "GET" || "Idempotency-Key" in headers || path.endsWith("/cancel");
    let attempts = retries ?? (repeatable ? 4 : 0);
    let forceToken = false;
    for (let attempt = 0; ; attempt++) {
      let response;
      try {
        const token = await this.getToken(forceToken);
        response = await this.fetch(this.baseUrl + path, {
          method,
          headers: {
            Authorization: `Bearer ${token}`,
            ...(body === undefined ? {} : { "Content-Type": "application/json" }),
            ...headers,
          },
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: "no-store",
        });
      } catch (cause) {
        if (cause instanceof ApiError) throw cause;
        if (attempt < attempts) {
          await sleep(backoffDelay(attempt, this.reconnect.initialDelayMs, this.reconnect.maxDelayMs));
          continue;
        }
        throw Object.assign(new ApiError("network_error", "The service could not be reached."), { cause });
      }
      if (response.status === 401 && !forceToken) {
        forceToken = true; // the token may have been revoked or expired early: ask again once
        attempts = Math.max(attempts, attempt + 1);
        continue;
      }
      const payload = response.status === 204 ? null : await response.json().catch(() => null);
      if (response.ok) return payload;
      const retryAfter = Number(response.headers.get("Retry-After")) || null;
      const error = new ApiError(
        payload?.error?.code ?? "http_" + response.status,
        payload?.error?.message ?? response.statusText,
        { status: response.status, details: payload?.error?.details ?? {}, retryAfter },
      );
      const transient = response.status >= 500 || (response.status === 429 && error.code === "rate_limited");
      if (transient && attempt < attempts) {
        await sleep(retryAfter ? retryAfter * 1000 : backoffDelay(attempt, this.reconnect.initialDelayMs, this.reconnect.maxDelayMs));
        continue;
      }
      throw error;
    }
  }

  /**
   * Create a generation (REST, with an Idempotency-Key so a retry after a lost reply never
   * makes a second one). Returns the generation object; watch it with `subscribe(gen.id)`.
   * @param {GenerateParams} params
   * @param {{idempotencyKey?: string}} [options]
   * @returns {Promise<Generation>}
   */
  generate(params, { idempotencyKey = randomKey() } = {}) {
    return this.request("POST", "/api/v1/generations", { body: params, headers: { "Idempotency-Key": idempotencyKey } });
  }

  /**
   * `generate` then `subscribe`: the few-lines path.
   * @param {GenerateParams} params
   * @param {SubscribeOptions & {idempotencyKey?: string}} [options]
   */
  async stream(params, options = {}) {
    const generation = await this.generate(params, { idempotencyKey: options.idempotencyKey });
    return this.subscribe(generation.id, { ...options, after: 0 });
  }

  /**
   * Stop a generation: the provider stops within one chunk and every subscriber gets `done`
   * with status `cancelled`. Idempotent.
   * @param {string} id
   * @returns {Promise<Generation>}
   */
  cancel(id) {
    return this.request("POST", `/api/v1/generations/${encodeURIComponent(id)}/cancel`);
  }

  /** @param {string} id @returns {Promise<Generation>} */
  get(id) {
    return this.request("GET", `/api/v1/generations/${encodeURIComponent(id)}`);
  }

  /**
   * The user's generations, newest first, straight from the database.
   * @param {{limit?: number, cursor?: string | null}} [page]
   * @returns {Promise<{results: Generation[], next_cursor: string | null}>}
   */
  list({ limit = 20, cursor = null } = {}) {
    const query = new URLSearchParams({ limit: String(limit) });
    if (cursor) query.set("cursor", cursor);
    return this.request("GET", `/api/v1/generations?${query}`);
  }

  /** @returns {Promise<{username: string, usage: Record<string, number>}>} */
  me() {
    return this.request("GET", "/api/v1/me");
  }

  // -- streams ----------------------------------------------------------------------------

  /**
   * Watch a generation. Without `after`, resumes from what this tab saved before a reload
   * (sessionStorage), else starts from 0 (a snapshot first). With `after` (and the `text` you
   * already have through it), continues after that seq.
   * @param {string} id
   * @param {SubscribeOptions} [options]
   * @returns {GenerationStream}
   */
  subscribe(id, options = {}) {
    if (this.#closed) throw new Error("StreamClient is closed");
    const saved = options.after === undefined ? this.#load(id) : null;
    this.#streams.get(id)?.close();
    const start = saved ?? { seq: options.after ?? 0, text: options.text ?? "", status: null };
    const stream = new GenerationStream(this, id, start, options);
    this.#streams.set(id, stream);
    if (saved && saved.text) {
      // Show the restored text at once; the rest follows from `seq`.
      stream._push({ text: saved.text, delta: "", replaced: true, event: null, reasoning: saved.reasoning ?? "" });
    }
    this.#save(stream);
    this.#attach(stream);
    return stream;
  }

  /**
   * Ids of the streams this tab was watching when it was reloaded (not yet `done`), oldest
   * first: `for (const id of client.savedStreams()) client.subscribe(id)`.
   * @returns {string[]}
   */
  savedStreams() {
    return this.#savedEntries().map(([id]) => id);
  }

  /** Open the connection now instead of with the first stream (shows the state early). */
  connect() {
    this.#ensureTransport();
  }

  /** Close every connection and stream, and remove the listeners this client added. */
  close() {
    this.#closed = true;
    for (const stream of [...this.#streams.values()]) stream.close();
    this.#dropSocket(1000);
    clearTimeout(this.#probeTimer);
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("offline", this.#onOffline);
      globalThis.removeEventListener("online", this.#onOnline);
    }
    this.#updateState();
  }

  /** @param {GenerationStream} stream @internal */
  _unsubscribe(stream) {
    if (this.#streams.get(stream.id) !== stream) return;
    this.#streams.delete(stream.id);
    this.#detach(stream);
    if (stream.transport === "websocket" && this.#wsOpen) this.#send({ type: "unsubscribe", id: stream.id });
    this.#forget(stream.id);
    this.#updateState();
  }

  /** Put a stream on the best transport available now. */
  #attach(stream) {
    if (stream.finished || this.#closed || !this.#online) return;
    if (this.#wsOpen) {
      this.#subscribeOverSocket(stream);
    } else if (this.#wsFailures > 0 || !this.transports.includes("websocket")) {
      // The WebSocket is down (a probe of it is scheduled): SSE now.
      if (this.transports.includes("sse")) this.#startSse(stream);
    } else {
      this.#ensureTransport(); // the stream is subscribed when the socket is up
    }
    this.#updateState();
  }

  #detach(stream) {
    clearTimeout(stream.retryTimer);
    clearTimeout(stream.resumeCheck);
    stream.sse?.abort();
    stream.sse = null;
    stream.transport = null;
  }

  /**
   * Apply one event to its stream (the fold of docs/protocol.md §3), dropping what was already
   * applied: a reconnect may replay an event the client has.
   * @param {GenerationStream} stream
   * @param {StreamEvent} event
   */
  #apply(stream, event) {
    if (stream.finished) return;
    clearTimeout(stream.resumeCheck);
    let delta = "";
    let replaced = false;
    if (event.type === "snapshot") {
      // The fold of 1..seq: it replaces the text (also mid-stream, after a gap the server
      // could not fill from its buffer).
      stream.text = event.text;
      stream.reasoning = event.reasoning ?? "";
      stream.seq = event.seq;
      stream.status = event.status;
      replaced = true;
    } else {
      if (event.seq <= stream.seq) return; // a duplicate after a reconnect
      if (event.seq !== stream.seq + 1) {
        // The server guarantees no gap; if one shows anyway, ask again from what we have.
        this.#resync(stream);
        return;
      }
      stream.seq = event.seq;
      if (event.type === "delta") {
        stream.text += event.text;
        delta = event.text;
        if (stream.status === "queued" || stream.status === null) stream.status = "running";
      } else if (event.type === "reasoning") {
        stream.reasoning += event.text;
        if (stream.status === "queued" || stream.status === null) stream.status = "running";
      } else if (event.type === "reset") {
        stream.text = "";
        stream.reasoning = "";
        replaced = true;
      } else if (event.type === "done") {
        stream.status = event.status;
        stream.result = event;
      }
    }
    stream.sseFailures = 0;
    stream.authFailures = 0;
    this.#save(stream);
    stream._push({ text: stream.text, delta, replaced, event, reasoning: stream.reasoning });
    if (event.type === "done") this.#finish(stream, null);
  }

  /** @param {GenerationStream} stream @param {Error | null} error */
  #finish(stream, error) {
    if (this.#streams.get(stream.id) === stream) this.#streams.delete(stream.id);
    this.#detach(stream);
    this.#forget(stream.id);
    stream._end(error);
    this.#updateState();
  }

  #resync(stream) {
    if (stream.transport === "websocket" && this.#wsOpen) {
      this.#subscribeOverSocket(stream);
    } else {
      this.#detach(stream);
      this.#attach(stream);
    }
  }

  /**
   * The stream was resumed at a seq the server has nothing after: if the generation had ended,
   * finish the stream from the row, which is final once terminal.
   * @param {GenerationStream} stream
   * @param {{resyncIfRunning?: boolean}} [options]
   */
  async #finishFromRow(stream, { resyncIfRunning = false } = {}) {
    try {
      const row = await this.get(stream.id);
      if (stream.finished) return;
      if (!["completed", "failed", "cancelled"].includes(row.status) || row.seq > stream.seq) {
        // Still going (a slow model, over the WebSocket), or the SSE 204 raced a retry.
        if (resyncIfRunning) this.#resync(stream);
        return;
      }
      if (stream.text !== row.output || stream.reasoning !== (row.reasoning ?? "")) {
        stream.text = row.output;
        stream.reasoning = row.reasoning ?? "";
        stream._push({ text: row.output, delta: "", replaced: true, event: null, reasoning: stream.reasoning });
      }
      stream.status = row.status;
      stream.result = {
        type: "done", id: row.id, seq: row.seq, status: row.status,
        finish_reason: row.finish_reason, usage: row.usage, error: row.error,
      };
      stream._push({ text: stream.text, delta: "", replaced: false, event: stream.result, reasoning: stream.reasoning });
      this.#finish(stream, null);
    } catch (error) {
      if (error instanceof ApiError && error.code === "not_found") this.#finish(stream, error);
    }
  }

  // -- WebSocket --------------------------------------------------------------------------

  /** @type {WebSocket | null} */
  #ws = null;
  #wsOpen = false;
  #everConnected = false;
  #wsFailures = 0; // consecutive attempts that did not reach auth.ok
  #wsDrops = 0; // consecutive drops of a socket that had worked, for the backoff
  #unauthorizedStreak = 0;
  /** @type {Promise<boolean> | null} */
  #connecting = null;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #probeTimer = undefined;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  #reauthTimer = undefined;
  /** @type {ReturnType<typeof setInterval> | undefined} */
  #heartbeat = undefined;
  #lastFrameAt = 0;
  #expiresAt = 0;
  #nextRef = 1;

  #send(frame) {
    const ref = this.#nextRef++;
    this.#ws?.send(JSON.stringify({ ...frame, ref }));
    return ref;
  }

  #subscribeOverSocket(stream) {
    if (stream.sse) {
      // Back from SSE to the WebSocket: stop the SSE stream first; what it delivered is in
      // `seq`, and duplicates are dropped anyway.
      stream.sse.abort();
      stream.sse = null;
    }
    clearTimeout(stream.retryTimer);
    stream.transport = "websocket";
    this.#send({ type: "subscribe", id: stream.id, after: stream.seq });
  }

  /** Make sure a transport is up or on its way (WebSocket, else a later probe of it). */
  #ensureTransport() {
    if (this.#closed || !this.#online || this.#wsOpen || this.#connecting) return;
    if (!this.transports.includes("websocket")) return;
    clearTimeout(this.#probeTimer);
    this.#updateState();
    this.#connecting = this.#openSocket().then((outcome) => {
      this.#connecting = null;
      if (this.#closed || !this.#online) return outcome;
      if (outcome === "open") {
        this.#wsFailures = 0;
        for (const stream of this.#streams.values()) this.#subscribeOverSocket(stream);
      } else if (outcome === "unauthorized") {
        // Not a blocked WebSocket but a refused token: SSE would be refused too. Try again
        // with a token the provider is asked for anew.
        const delay = backoffDelay(this.#unauthorizedStreak - 1, this.reconnect.initialDelayMs, this.reconnect.maxDelayMs);
        this.#probeTimer = setTimeout(() => this.#ensureTransport(), delay);
      } else {
        this.#wsFailures += 1;
        // The WebSocket cannot connect (blocked by a proxy, a firewall, an old load
        // balancer...): SSE carries the streams meanwhile, and the WebSocket is tried again
        // later, less often each time.
        if (this.transports.includes("sse")) {
          for (const stream of this.#streams.values()) if (!stream.sse && !stream.finished) this.#startSse(stream);
        }
        const delay = backoffDelay(this.#wsFailures - 1, this.reconnect.initialDelayMs, Math.max(this.reconnect.maxDelayMs, 30_000));
        this.#probeTimer = setTimeout(() => this.#ensureTransport(), delay);
      }
      this.#updateState();
      return outcome;
    });
  }

  /**
   * Open the socket and authenticate.
   * @returns {Promise<"open" | "failed" | "unauthorized">} "open" once `auth.ok` arrived
   */
  #openSocket() {
    return new Promise((resolve) => {
      let settled = false;
      /** @param {"open" | "failed" | "unauthorized"} outcome */
      const settle = (outcome) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(outcome);
      };
      let ws;
      try {
        ws = new WebSocket(this.wsUrl);
      } catch {
        settle("failed"); // a bad URL, or a page policy that forbids it
        return;
      }
      this.#ws = ws;
      const timer = setTimeout(() => {
        // No auth.ok in time: a proxy that holds the upgrade, or a dead network.
        this.#abandon(ws);
        settle("failed");
      }, this.connectTimeoutMs);
      ws.onopen = async () => {
        try {
          const token = await this.getToken(this.#unauthorizedStreak > 0);
          if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "auth", token }));
        } catch (error) {
          this.#emit("error", error);
          this.#abandon(ws);
          settle("unauthorized");
        }
      };
      ws.onmessage = (message) => {
        this.#lastFrameAt = Date.now();
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return;
        }
        if (frame.type === "auth.ok") {
          this.#onAuthOk(frame);
          if (!settled) {
            this.#wsOpen = true;
            this.#everConnected = true;
            this.#wsDrops = 0;
            this.#unauthorizedStreak = 0;
            this.#startHeartbeat();
            settle("open");
          }
          return;
        }
        this.#onFrame(frame);
      };
      ws.onclose = (event) => {
        if (this.#ws !== ws) return; // a socket we already gave up on
        this.#ws = null;
        if (!settled) {
          if (event.code === 4401) {
            this.#onUnauthorized();
            settle("unauthorized");
          } else {
            // Refused, unreachable, closed before auth (or 4429: too many sockets for this
            // user, where SSE still works).
            settle("failed");
          }
          return;
        }
        this.#onSocketLost(event.code);
      };
    });
  }

  /** Forget a socket without waiting for its close handshake (it may never come). */
  #abandon(ws) {
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      ws.close(1000);
    } catch {
      // already closing
    }
    if (this.#ws === ws) this.#ws = null;
  }

  #dropSocket(code) {
    clearInterval(this.#heartbeat);
    clearTimeout(this.#reauthTimer);
    const ws = this.#ws;
    this.#wsOpen = false;
    if (ws) this.#abandon(ws);
    for (const stream of this.#streams.values()) if (stream.transport === "websocket") stream.transport = null;
    return code;
  }

  /** An open, authenticated socket closed: 1001 (server restart), 4008 (slow reader), 4401... */
  #onSocketLost(code) {
    this.#dropSocket(code);
    if (this.#closed || !this.#online) return this.#updateState();
    if (code === 4401) this.#onUnauthorized();
    // 4429: this user has too many connections open; waiting longer is the only cure.
    const floor = code === 4429 ? 5000 : 0;
    const delay = Math.max(floor, backoffDelay(this.#wsDrops++, this.reconnect.initialDelayMs / 2, this.reconnect.maxDelayMs));
    this.#updateState();
    clearTimeout(this.#probeTimer);
    this.#probeTimer = setTimeout(() => this.#ensureTransport(), delay);
  }

  #onUnauthorized() {
    // The token was refused or expired: the next attempt asks the provider for a new one.
    this.#token = null;
    this.#unauthorizedStreak += 1;
    if (this.#unauthorizedStreak === 2) {
      this.#emit("error", new ApiError("unauthorized", "The token provider's token was refused.", { status: 401 }));
    }
  }

  #onAuthOk(frame) {
    this.#expiresAt = frame.expires_at * 1000;
    clearTimeout(this.#reauthTimer);
    const token = this.#token;
    const due = token && token.refreshAt > 0 ? token.refreshAt : this.#expiresAt - 60_000;
    // At least 1 s apart, so that a provider handing out nearly expired tokens cannot spin.
    this.#reauthTimer = setTimeout(() => this.#reauth(), Math.max(1000, due - Date.now()));
  }

  /** Send a fresh token on the open socket before the current one expires. */
  async #reauth() {
    const ws = this.#ws;
    try {
      const token = await this.getToken();
      const times = jwtTimes(token);
      if (times && times.exp <= this.#expiresAt) {
        // The provider gave no newer token; the server will close with 4401 at expiry and
        // the reconnect asks the provider again.
        return;
      }
      if (ws && ws === this.#ws && this.#wsOpen) this.#send({ type: "auth", token });
    } catch (error) {
      this.#emit("error", error);
    }
  }

  #startHeartbeat() {
    clearInterval(this.#heartbeat);
    this.#lastFrameAt = Date.now();
    // A socket on a dead network stays "open" until TCP gives up, minutes later: ping while
    // quiet, and give up on the socket when not even the pong comes back.
    const tick = Math.max(1000, Math.floor(this.heartbeatMs / 2));
    this.#heartbeat = setInterval(() => {
      if (!this.#wsOpen) return;
      const silent = Date.now() - this.#lastFrameAt;
      if (silent > this.heartbeatMs + tick) this.#onSocketLost(4000);
      else if (silent >= this.heartbeatMs) this.#send({ type: "ping" });
    }, tick);
  }

  #onFrame(frame) {
    if (EVENT_TYPES.has(frame.type) && typeof frame.id === "string") {
      const stream = this.#streams.get(frame.id);
      if (stream && stream.transport === "websocket") this.#apply(stream, frame);
      return;
    }
    if (frame.type === "subscribed") {
      const stream = this.#streams.get(frame.id);
      if (stream && stream.seq > 0) {
        clearTimeout(stream.resumeCheck);
        stream.resumeCheck = setTimeout(() => this.#finishFromRow(stream), RESUME_CHECK_MS);
      }
      return;
    }
    if (frame.type === "error") {
      const stream = frame.id ? this.#streams.get(frame.id) : undefined;
      const error = new ApiError(frame.code, frame.message ?? frame.code, {
        details: frame.details ?? {}, retryAfter: frame.retry_after ?? null,
      });
      if (stream && frame.code === "not_found") this.#finish(stream, error);
      else if (stream && frame.code === "unavailable" && !stream.finished) {
        // The service could not reach its storage to check the subscription: ask again
        // after the delay it gave, from what this stream already holds.
        clearTimeout(stream.retryTimer);
        stream.retryTimer = setTimeout(() => {
          if (this.#wsOpen && !stream.finished) this.#subscribeOverSocket(stream);
        }, backoffDelay(0, 2000 * (frame.retry_after ?? 1))); // between 1x and 2x the delay
      } else if (frame.code !== "token_expired") this.#emit("error", error);
    }
  }

  // -- Server-Sent Events -----------------------------------------------------------------

  #startSse(stream) {
    if (stream.finished || stream.sse) return;
    clearTimeout(stream.retryTimer);
    stream.transport = "sse";
    if (this.sseMode === "eventsource") this.#sseEventSource(stream);
    else this.#sseFetch(stream);
  }

  /** The SSE connection of `stream` ended without `done`: go on, on the best transport. */
  #sseLost(stream, handle, { unauthorized = false } = {}) {
    if (stream.sse !== handle || stream.finished) return;
    stream.sse = null;
    stream.transport = null;
    if (unauthorized) {
      this.#token = null;
      if (++stream.authFailures >= 3) {
        this.#finish(stream, new ApiError("unauthorized", "The service refused the token.", { status: 401 }));
        return;
      }
    }
    this.#updateState();
    if (this.#closed || !this.#online) return;
    const delay = backoffDelay(stream.sseFailures++, this.reconnect.initialDelayMs / 2, this.reconnect.maxDelayMs);
    stream.retryTimer = setTimeout(() => {
      if (this.#wsOpen) this.#subscribeOverSocket(stream);
      else this.#startSse(stream);
    }, delay);
  }

  #sseUrl(stream, query = {}) {
    const params = new URLSearchParams({ after: String(stream.seq), ...query });
    return `${this.baseUrl}/api/v1/generations/${encodeURIComponent(stream.id)}/events?${params}`;
  }

  /** SSE through fetch streaming: the token goes in the Authorization header. */
  async #sseFetch(stream) {
    const controller = new AbortController();
    const handle = { abort: () => controller.abort(), connected: false };
    stream.sse = handle;
    let silence;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => controller.abort(), SSE_SILENCE_MS);
    };
    try {
      const token = await this.getToken(stream.authFailures > 0);
      if (stream.sse !== handle) return;
      watch();
      const response = await this.fetch(this.#sseUrl(stream), {
        headers: { Authorization: `Bearer ${token}`, Accept: "text/event-stream", "Last-Event-ID": String(stream.seq) },
        signal: controller.signal,
        cache: "no-store",
      });
      if (response.status === 204) {
        // Nothing after our seq: the generation had ended.
        clearTimeout(silence);
        stream.sse = null;
        return this.#finishFromRow(stream, { resyncIfRunning: true });
      }
      if (response.status === 401) return this.#sseLost(stream, handle, { unauthorized: true });
      if (response.status === 404) {
        return this.#finish(stream, new ApiError("not_found", "No such generation.", { status: 404 }));
      }
      if (!response.ok || !response.body) return this.#sseLost(stream, handle);
      handle.connected = true;
      this.#updateState();
      const parser = new SseParser((type, data) => {
        if (!EVENT_TYPES.has(type) || stream.sse !== handle) return;
        this.#apply(stream, JSON.parse(data));
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        watch();
        parser.push(value);
        if (stream.finished) {
          controller.abort();
          return;
        }
      }
    } catch {
      // aborted (by us, or by the silence watchdog) or a network error
    } finally {
      clearTimeout(silence);
    }
    this.#sseLost(stream, handle);
  }

  /** SSE through the browser's EventSource, which cannot send headers: a ticket in the URL. */
  async #sseEventSource(stream) {
    let source = /** @type {EventSource | null} */ (null);
    const handle = { abort: () => source?.close(), connected: false };
    stream.sse = handle;
    // A ticket is good for TICKET_TTL_S (300 s by default): reuse it for reconnects until it
    // nears its end, or until it was refused twice (expired, or the server's clock is behind).
    if (!stream.ticket || stream.ticket.failures >= 2 || stream.ticket.expiresAt - Date.now() < 30_000) {
      try {
        const path = `/api/v1/generations/${encodeURIComponent(stream.id)}/ticket`;
        const issued = await this.request("POST", path, { retries: 0 });
        stream.ticket = { value: issued.ticket, expiresAt: Date.now() + issued.expires_in * 1000, failures: 0 };
      } catch (error) {
        if (error instanceof ApiError && error.code === "not_found") return this.#finish(stream, error);
        return this.#sseLost(stream, handle, { unauthorized: error instanceof ApiError && error.status === 401 });
      }
    }
    if (stream.sse !== handle) return;
    const ticket = stream.ticket;
    source = new EventSource(this.#sseUrl(stream, { ticket: ticket.value }));
    source.onopen = () => {
      handle.connected = true;
      ticket.failures = 0;
      this.#updateState();
    };
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        if (stream.sse !== handle) return;
        this.#apply(stream, JSON.parse(/** @type {MessageEvent} */ (message).data));
        if (stream.finished) source?.close();
      });
    }
    source.onerror = () => {
      // CONNECTING: EventSource reconnects by itself with Last-Event-ID. CLOSED: it gave up
      // (an expired ticket's 401, the 204 after `done`...): start over with a new ticket.
      if (source?.readyState === EventSource.CLOSED) {
        source.close();
        ticket.failures += 1;
        this.#sseLost(stream, handle);
      } else {
        handle.connected = false;
        this.#updateState();
      }
    };
  }

  // -- network state ----------------------------------------------------------------------

  #onOffline = () => {
    // The browser knows the network is gone; its sockets may stay "open" for minutes (TCP has
    // not noticed, and Chromium keeps WebSockets through its offline mode). Drop everything
    // now and resume from the last seq when the network is back.
    this.#online = false;
    clearTimeout(this.#probeTimer);
    this.#dropSocket(1000);
    for (const stream of this.#streams.values()) this.#detach(stream);
    this.#updateState();
  };

  #onOnline = () => {
    this.#online = true;
    this.#wsFailures = 0; // the WebSocket gets a new chance on the new network
    this.#wsDrops = 0;
    for (const stream of this.#streams.values()) {
      stream.sseFailures = 0;
      this.#attach(stream);
    }
    this.#ensureTransport();
    this.#updateState();
  };

  // -- sessionStorage ---------------------------------------------------------------------

  #save(stream) {
    if (!this.storage) return;
    const entry = JSON.stringify({
      seq: stream.seq, text: stream.text, reasoning: stream.reasoning, status: stream.status, savedAt: Date.now(),
    });
    try {
      this.storage.setItem(STORAGE_PREFIX + stream.id, entry);
    } catch {
      // Full: drop the oldest saved streams and try once more.
      for (const [id] of this.#savedEntries().slice(0, 10)) this.#forget(id);
      try {
        this.storage.setItem(STORAGE_PREFIX + stream.id, entry);
      } catch {
        // a reload then starts this stream from its snapshot: slower, still exact
      }
    }
  }

  /** @returns {{seq: number, text: string, status: string | null, reasoning?: string} | null} */
  #load(id) {
    if (!this.storage) return null;
    try {
      const saved = JSON.parse(this.storage.getItem(STORAGE_PREFIX + id) ?? "null");
      if (saved && Number.isInteger(saved.seq) && typeof saved.text === "string") return saved;
    } catch {
      // unreadable: start from the snapshot
    }
    return null;
  }

  #forget(id) {
    try {
      this.storage?.removeItem(STORAGE_PREFIX + id);
    } catch {
      // storage disabled
    }
  }

  /** @returns {[string, {savedAt: number}][]} */
  #savedEntries() {
    if (!this.storage) return [];
    const entries = [];
    for (let i = 0; i < this.storage.length; i++) {
      const key = this.storage.key(i);
      if (!key?.startsWith(STORAGE_PREFIX)) continue;
      try {
        entries.push([key.slice(STORAGE_PREFIX.length), JSON.parse(this.storage.getItem(key) ?? "{}")]);
      } catch {
        // skip
      }
    }
    entries.sort((a, b) => (a[1].savedAt ?? 0) - (b[1].savedAt ?? 0));
    if (entries.length > MAX_SAVED_STREAMS) {
      for (const [id] of entries.splice(0, entries.length - MAX_SAVED_STREAMS)) this.#forget(id);
    }
    return /** @type {[string, {savedAt: number}][]} */ (entries);
  }
}

/** When to ask the provider for a new token: a quarter of its lifetime (2-60 s) before exp. */
function refreshTime(token) {
  const times = jwtTimes(token);
  if (!times) return 0; // opaque token: ask the provider every time (it caches)
  const lifetime = times.exp - (times.iat ?? Date.now());
  const margin = Math.min(60_000, Math.max(2000, lifetime / 4));
  return times.exp - margin;
}

function safeSessionStorage() {
  try {
    const storage = globalThis.sessionStorage;
    if (!storage) return null;
    storage.getItem(STORAGE_PREFIX + "probe");
    return storage;
  } catch {
    return null; // disabled (privacy settings, sandboxed iframe)
  }
}
