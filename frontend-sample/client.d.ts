// Types for client.js, the browser client of the LLM stream service (docs/browser-client.md).
// The wire objects follow docs/protocol.md.

/** What the client is using to receive streams right now. */
export type ConnectionState =
  | "idle" // not connected yet, or closed
  | "connecting" // first WebSocket attempt
  | "websocket" // the WebSocket is up and authenticated
  | "sse" // the WebSocket cannot connect; Server-Sent Events carry the streams
  | "reconnecting" // a connection dropped; retrying with backoff
  | "offline"; // the browser reports no network; resumes when it is back

export type GenerationStatus = "queued" | "running" | "completed" | "failed" | "cancelled";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  /** Completion tokens of earlier attempts that failed mid-stream (included above). */
  earlier_attempts_completion_tokens?: number;
}

export type FinishReason = "stop" | "length" | "content_filter" | "tool_calls" | "cancelled" | "error";

/** `done.error` and `Generation.error` (docs/protocol.md, "Provider failures"). */
export interface GenerationError {
  code: string;
  message: string;
  /** Seconds, for `provider_rate_limited` when the provider said. */
  retry_after?: number;
}

/** The generation object of the REST API (docs/protocol.md §2). */
export interface Generation {
  id: string;
  status: GenerationStatus;
  model: string;
  /** "demo": the offline demo's made-up answer, not a model's. */
  provider: "openai" | "demo";
  prompt: string;
  system: string | null;
  max_tokens: number;
  temperature: number | null;
  output: string;
  /** A reasoning model's thinking ("" when it sent none); never part of `output`. */
  reasoning: string;
  seq: number;
  attempt: number;
  finish_reason: FinishReason | null;
  usage: Usage | null;
  error: GenerationError | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  /** The conversation this generation is a turn of, and the turn it follows. */
  conversation_id: string | null;
  parent_id: string | null;
}

export interface GenerateParams {
  prompt: string;
  model?: string;
  system?: string;
  max_tokens?: number;
  temperature?: number;
  /** Continue this conversation (after its current turn unless `parent_id` is given). */
  conversation_id?: string;
  /** Follow this turn (a branch if it has children already); null: a new first turn. */
  parent_id?: string | null;
}

/** A conversation (docs/protocol.md "Conversations"). */
export interface Conversation {
  id: string;
  title: string;
  system: string | null;
  current_turn_id: string | null;
  turn_count: number;
  created_at: string;
  updated_at: string;
}

/** A conversation with every turn, the current branch and the branches. */
export interface ConversationView extends Conversation {
  turns: Generation[];
  current_path: string[];
  branches: { turn_id: string; turns: number; current: boolean }[];
}

export interface SnapshotEvent {
  type: "snapshot";
  id: string;
  seq: number;
  text: string;
  /** The reasoning through `seq` (v1.1; a client of an older server would find none). */
  reasoning: string;
  status: GenerationStatus;
}
export interface DeltaEvent {
  type: "delta";
  id: string;
  seq: number;
  text: string;
}
/** Appends `text` to the reasoning, not to the output (same seq space as `delta`). */
export interface ReasoningEvent {
  type: "reasoning";
  id: string;
  seq: number;
  text: string;
}
export interface ResetEvent {
  type: "reset";
  id: string;
  seq: number;
  attempt: number;
}
export interface DoneEvent {
  type: "done";
  id: string;
  seq: number;
  status: "completed" | "failed" | "cancelled";
  finish_reason: FinishReason | null;
  usage: Usage | null;
  error: GenerationError | null;
}
export type StreamEvent = SnapshotEvent | DeltaEvent | ReasoningEvent | ResetEvent | DoneEvent;

// The WebSocket frames of /ws/v1 besides the events (docs/protocol.md §5, docs/asyncapi.json).
// client.js speaks them for you; they are here for code that opens the WebSocket itself.
// tests/browser/test_client_types.py checks every interface below (and the events, the
// generation and the conversation above) field by field against realtime/schemas.py.

/** The error codes of REST bodies and WebSocket error frames (docs/protocol.md §2). */
export type ErrorCode =
  | "invalid_json"
  | "invalid_request"
  | "prompt_too_long"
  | "unauthorized"
  | "token_expired"
  | "not_found"
  | "method_not_allowed"
  | "idempotency_conflict"
  | "parent_not_finished"
  | "conversation_full"
  | "payload_too_large"
  | "unsupported_media_type"
  | "rate_limited"
  | "quota_exceeded"
  | "too_many_active"
  | "too_many_streams"
  | "internal_error"
  | "unavailable";

/** The reply to `auth`. */
export interface AuthOkFrame {
  type: "auth.ok";
  /** The client frame's `ref`, echoed as it came (null when it sent none). */
  ref: unknown;
  user: string;
  /** The token's `exp`, in Unix seconds. */
  expires_at: number;
}
/** A frame that could not be run (the connection stays open), or the reason for a close. */
export interface ErrorFrame {
  type: "error";
  /** Absent only from errors that answer no frame (token expired, account deactivated). */
  ref?: unknown;
  /** The generation the failed frame named. */
  id?: string;
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
  /** Seconds before trying again (429 codes, unavailable). */
  retry_after?: number;
}
export interface CreatedFrame {
  type: "created";
  ref: unknown;
  generation: Generation;
}
export interface SubscribedFrame {
  type: "subscribed";
  ref: unknown;
  id: string;
}
export interface UnsubscribedFrame {
  type: "unsubscribed";
  ref: unknown;
  id: string;
}
export interface AckFrame {
  type: "ack";
  ref: unknown;
  id: string;
}
export interface PongFrame {
  type: "pong";
  ref: unknown;
}
export interface ConversationSubscribedFrame {
  type: "conversation_subscribed";
  ref: unknown;
  conversation_id: string;
}
export interface ConversationUnsubscribedFrame {
  type: "conversation_unsubscribed";
  ref: unknown;
  conversation_id: string;
}
/** A turn of a followed conversation; `seq` is its number in the conversation. */
export interface TurnFrame {
  type: "turn";
  conversation_id: string;
  seq: number;
  generation: Generation;
}
export interface ConversationUpdatedFrame {
  type: "conversation_updated";
  conversation_id: string;
  conversation: Conversation;
}
export interface ConversationDeletedFrame {
  type: "conversation_deleted";
  conversation_id: string;
}
/** Every frame the service sends on the WebSocket. */
export type ServerFrame =
  | StreamEvent
  | AuthOkFrame
  | ErrorFrame
  | CreatedFrame
  | SubscribedFrame
  | UnsubscribedFrame
  | AckFrame
  | PongFrame
  | ConversationSubscribedFrame
  | ConversationUnsubscribedFrame
  | TurnFrame
  | ConversationUpdatedFrame
  | ConversationDeletedFrame;

/** The first frame, and again with a fresh token to renew the session. */
export interface AuthFrame {
  type: "auth";
  /** Any JSON value; echoed in the reply. */
  ref?: unknown;
  token: string;
}
export interface GenerateFrame {
  type: "generate";
  ref?: unknown;
  prompt: string;
  model?: string | null;
  system?: string | null;
  max_tokens?: number | null;
  temperature?: number | null;
  idempotency_key?: string;
  conversation_id?: string | null;
  parent_id?: string | null;
}
export interface SubscribeFrame {
  type: "subscribe";
  ref?: unknown;
  id: string;
  /** The last seq the client has; 0 or absent: everything, a snapshot first. */
  after?: number | null;
}
export interface UnsubscribeFrame {
  type: "unsubscribe";
  ref?: unknown;
  id: string;
}
export interface CancelFrame {
  type: "cancel";
  ref?: unknown;
  id: string;
}
export interface PingFrame {
  type: "ping";
  ref?: unknown;
}
export interface SubscribeConversationFrame {
  type: "subscribe_conversation";
  ref?: unknown;
  conversation_id: string;
  /** The last turn seq the client has. */
  after?: number | null;
}
export interface UnsubscribeConversationFrame {
  type: "unsubscribe_conversation";
  ref?: unknown;
  conversation_id: string;
}
/** Every frame a client may send on the WebSocket. */
export type ClientFrame =
  | AuthFrame
  | GenerateFrame
  | SubscribeFrame
  | UnsubscribeFrame
  | CancelFrame
  | PingFrame
  | SubscribeConversationFrame
  | UnsubscribeConversationFrame;

/** One step of a stream, to callbacks and to `for await`. */
export interface StreamUpdate {
  /** The whole text so far. Render this: it is right even after a reset or a snapshot. */
  text: string;
  /** What was appended by this step ("" when the text was replaced or nothing was added). */
  delta: string;
  /** True when `text` was replaced rather than appended to (snapshot, reset, restore). */
  replaced: boolean;
  /** The event applied; null for the text restored from sessionStorage after a reload. */
  event: StreamEvent | null;
  /** The whole reasoning so far ("" for a model that sends none). */
  reasoning: string;
}

/**
 * Returns a JWT. Called when the client has none, shortly before the cached one expires
 * (a quarter of its lifetime, 2-60 s before `exp`), and with `force: true` after the
 * service refused one.
 */
export type TokenProvider = (request: { force: boolean }) => string | Promise<string>;

export interface StreamClientOptions {
  token: TokenProvider;
  /** The service's origin, e.g. "https://llm.example.com". Default: the page's origin. */
  baseUrl?: string;
  /** Default: baseUrl (or the page's origin) with ws(s):// and /ws/v1. */
  wsUrl?: string;
  /** In order of preference. Default ["websocket", "sse"]. */
  transports?: Array<"websocket" | "sse">;
  /**
   * How SSE is read: "fetch" (default; streaming fetch with the Authorization header) or
   * "eventsource" (the browser's EventSource with a one-generation ticket in the URL).
   */
  sse?: "fetch" | "eventsource";
  /** Where the last seq and text of each stream are kept. Default sessionStorage; null: none. */
  storage?: Storage | null;
  /** Time for the WebSocket to open and answer `auth.ok` (ms). Default 8000. */
  connectTimeoutMs?: number;
  /** Ping the WebSocket after this long without a frame (ms); give up one half later. Default 25000. */
  heartbeatMs?: number;
  /** Backoff between reconnects: exponential from initialDelayMs to maxDelayMs, with jitter. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number };
  onStateChange?: (state: ConnectionState) => void;
  onError?: (error: ApiError) => void;
  /** A fetch implementation (default globalThis.fetch). */
  fetch?: typeof fetch;
}

export interface SubscribeOptions {
  /** Continue after this seq (you have the text through it). Omit to resume what this tab saved. */
  after?: number;
  /** The text you have through `after`, so that `stream.text` is whole. */
  text?: string;
  onUpdate?: (update: StreamUpdate) => void;
  onDone?: (done: DoneEvent) => void;
  onError?: (error: ApiError) => void;
}

export class ApiError extends Error {
  constructor(
    code: string,
    message: string,
    extra?: { status?: number; details?: object; retryAfter?: number | null },
  );
  /** A REST error code (docs/protocol.md §2), "network_error", or "closed" for `stream.close()`. */
  code: string;
  /** The HTTP status, 0 when there was no response. */
  status: number;
  details: object;
  /** Seconds, for 429 answers. */
  retryAfter: number | null;
}

export class GenerationStream implements AsyncIterable<StreamUpdate> {
  readonly id: string;
  /** The text so far. */
  readonly text: string;
  /** The reasoning so far (a reasoning model's thinking); never part of `text`. */
  readonly reasoning: string;
  /** The last seq applied. */
  readonly seq: number;
  readonly status: GenerationStatus | null;
  /** The `done` event, once it arrived. */
  readonly result: DoneEvent | null;
  readonly finished: boolean;
  readonly transport: "websocket" | "sse" | null;
  /** Resolves with `done`; rejects with an ApiError (`not_found`, `unauthorized`, `closed`). */
  readonly done: Promise<DoneEvent>;
  /** Stop watching; the generation goes on (use `client.cancel(id)` to stop it). */
  close(): void;
  [Symbol.asyncIterator](): AsyncIterator<StreamUpdate>;
}

export class StreamClient {
  constructor(options: StreamClientOptions);
  readonly state: ConnectionState;
  readonly baseUrl: string;
  readonly wsUrl: string;
  on(event: "state", listener: (state: ConnectionState) => void): () => void;
  on(event: "error", listener: (error: ApiError) => void): () => void;
  /** A token from the provider, cached until shortly before it expires. */
  getToken(force?: boolean): Promise<string>;
  /** A JSON request with the bearer token; retries what is safe to repeat. */
  request<T = unknown>(
    method: string,
    path: string,
    options?: { body?: unknown; headers?: Record<string, string>; retries?: number },
  ): Promise<T>;
  /** POST /api/v1/generations with an Idempotency-Key (a random one by default). */
  generate(params: GenerateParams, options?: { idempotencyKey?: string }): Promise<Generation>;
  /** generate() then subscribe(). */
  stream(
    params: GenerateParams,
    options?: SubscribeOptions & { idempotencyKey?: string },
  ): Promise<GenerationStream>;
  /** Watch a generation; resumes what this tab saved unless `after` is given. */
  subscribe(id: string, options?: SubscribeOptions): GenerationStream;
  /** Stop a generation (idempotent). */
  cancel(id: string): Promise<Generation>;
  get(id: string): Promise<Generation>;
  list(page?: {
    limit?: number;
    cursor?: string | null;
  }): Promise<{ results: Generation[]; next_cursor: string | null }>;
  me(): Promise<{ username: string; usage: Record<string, number> }>;
  conversations(page?: {
    limit?: number;
    cursor?: string | null;
  }): Promise<{ results: Conversation[]; next_cursor: string | null }>;
  conversation(id: string): Promise<ConversationView>;
  updateConversation(
    id: string,
    fields: { title?: string; system?: string | null; current_turn_id?: string },
  ): Promise<ConversationView>;
  deleteConversation(id: string): Promise<null>;
  /** Hear of each turn of a conversation (from any device); returns a function that stops. */
  watchConversation(
    id: string,
    options: {
      after?: number;
      onTurn: (generation: Generation, seq: number) => void;
      /** Renamed or switched branch on any device; null once deleted. */
      onChange?: (conversation: Conversation | null) => void;
    },
  ): () => void;
  /** Ids of the streams this tab watched before a reload and that had not ended. */
  savedStreams(): string[];
  /** Connect now rather than with the first stream. */
  connect(): void;
  /** Close every connection and stream. */
  close(): void;
}

/** The delay before retry number `attempt`: exponential with jitter (ms). */
export function backoffDelay(attempt: number, initialMs?: number, maxMs?: number): number;
