// A small client for the LLM stream service: WebSocket first, SSE fallback, resume on reload.
// Plain ES module, no build step. See docs/protocol.md for the wire contract.
//
//   import { StreamClient } from "./client.js";
//   const client = new StreamClient({ baseUrl: "", getToken: async () => token });
//   const gen = await client.generate({ prompt: "Hello" });
//   client.subscribe(gen.id, { onText: (text) => render(text), onDone: (done) => ... });

/** @typedef {{type: string, id: string, seq: number, text?: string, status?: string}} StreamEvent */

const STORAGE_PREFIX = "llm-stream:";

export class StreamClient {
  /**
   * @param {{baseUrl?: string, getToken: () => Promise<string>, onState?: (state: string) => void}} options
   */
  constructor({ baseUrl = "", getToken, onState = () => {} }) {
    this.baseUrl = baseUrl;
    this.getToken = getToken;
    this.onState = onState;
    this.ws = null;
    this.wsReady = null;
    this.transport = "connecting";
    this.subs = new Map(); // id -> {after, text, handlers, sse}
    this.pending = new Map(); // ref -> {resolve, reject}
    this.nextRef = 1;
    this.attempt = 0;
    this.wsFailures = 0;
  }

  async api(path, options = {}) {
    const token = await this.getToken();
    const response = await fetch(this.baseUrl + path, {
      ...options,
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}`, ...(options.headers || {}) },
    });
    const body = response.status === 204 ? null : await response.json();
    if (!response.ok) throw Object.assign(new Error(body?.error?.message || response.statusText), { body, status: response.status });
    return body;
  }

  generate(fields, { idempotencyKey = crypto.randomUUID() } = {}) {
    return this.api("/api/v1/generations", {
      method: "POST", body: JSON.stringify(fields), headers: { "Idempotency-Key": idempotencyKey },
    });
  }

  cancel(id) {
    return this.api(`/api/v1/generations/${id}/cancel`, { method: "POST" });
  }

  /** Watch a generation; `onText` gets the whole text so far after every event. */
  subscribe(id, { after, onText = () => {}, onDone = () => {} } = {}) {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE_PREFIX + id) || "null");
    const sub = {
      after: after ?? saved?.seq ?? 0,
      text: saved && after === undefined ? saved.text : "",
      onText, onDone, sse: null, done: false,
    };
    this.subs.set(id, sub);
    if (sub.text) onText(sub.text);
    this.#attach(id, sub);
    return () => this.unsubscribe(id);
  }

  unsubscribe(id) {
    const sub = this.subs.get(id);
    if (!sub) return;
    this.subs.delete(id);
    sub.sse?.abort();
    if (this.ws?.readyState === WebSocket.OPEN) this.#send({ type: "unsubscribe", id });
  }

  #apply(id, event) {
    const sub = this.subs.get(id);
    if (!sub || sub.done) return;
    if (event.type !== "snapshot" && event.seq <= sub.after) return; // already applied
    if (event.type === "snapshot") sub.text = event.text;
    else if (event.type === "delta") sub.text += event.text;
    else if (event.type === "reset") sub.text = "";
    sub.after = event.seq;
    sessionStorage.setItem(STORAGE_PREFIX + id, JSON.stringify({ seq: sub.after, text: sub.text }));
    sub.onText(sub.text, event);
    if (event.type === "done") {
      sub.done = true;
      sessionStorage.removeItem(STORAGE_PREFIX + id);
      this.subs.delete(id);
      sub.onDone(event);
    }
  }

  async #attach(id, sub) {
    if (this.wsFailures < 2 && (await this.#connect())) {
      this.#send({ type: "subscribe", id, after: sub.after });
    } else {
      this.#sse(id, sub);
    }
  }

  #setState(state) {
    this.transport = state;
    this.onState(state);
  }

  #send(frame) {
    const ref = this.nextRef++;
    this.ws.send(JSON.stringify({ ...frame, ref }));
    return ref;
  }

  #connect() {
    if (this.wsReady) return this.wsReady;
    this.wsReady = new Promise((resolve) => {
      const url = this.baseUrl.replace(/^http/, "ws") || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
      let opened = false;
      const ws = new WebSocket(`${url}/ws/v1`);
      this.ws = ws;
      const timer = setTimeout(() => { if (!opened) ws.close(); }, 5000);
      ws.onopen = async () => ws.send(JSON.stringify({ type: "auth", token: await this.getToken() }));
      ws.onmessage = (message) => {
        const frame = JSON.parse(message.data);
        if (frame.type === "auth.ok") {
          opened = true;
          clearTimeout(timer);
          this.attempt = 0;
          this.wsFailures = 0;
          this.#setState("websocket");
          this.#scheduleRefresh(frame.expires_at);
          resolve(true);
        } else if (frame.id && ["snapshot", "delta", "reset", "done"].includes(frame.type)) {
          this.#apply(frame.id, frame);
        }
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        this.ws = null;
        this.wsReady = null;
        if (!opened) {
          this.wsFailures += 1;
          resolve(false);
          return;
        }
        // 1001 (server restart), 4008 (too slow), network loss: reconnect and resume.
        this.#setState("reconnecting");
        const delay = Math.min(10000, 250 * 2 ** this.attempt++) * (0.5 + Math.random() / 2);
        setTimeout(() => { for (const [id, sub] of this.subs) this.#attach(id, sub); }, delay);
      };
    });
    return this.wsReady;
  }

  #scheduleRefresh(expiresAt) {
    clearTimeout(this.refreshTimer);
    const inMs = Math.max(5000, expiresAt * 1000 - Date.now() - 60000);
    this.refreshTimer = setTimeout(async () => {
      if (this.ws?.readyState === WebSocket.OPEN) this.#send({ type: "auth", token: await this.getToken() });
    }, inMs);
  }

  async #sse(id, sub) {
    this.#setState("sse");
    const controller = new AbortController();
    sub.sse = controller;
    try {
      const token = await this.getToken();
      const response = await fetch(`${this.baseUrl}/api/v1/generations/${id}/events`, {
        headers: { Authorization: `Bearer ${token}`, "Last-Event-ID": String(sub.after) },
        signal: controller.signal,
      });
      if (response.status === 204) return;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) this.#apply(id, JSON.parse(data));
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
    }
    if (this.subs.get(id) === sub && !sub.done) {
      this.#setState("reconnecting");
      setTimeout(() => this.#attach(id, sub), 1000 * (0.5 + Math.random()));
    }
  }
}
