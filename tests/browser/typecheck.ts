// An app's use of the client, compiled with `tsc --strict` against frontend-sample/client.d.ts
// (test_sample_files.py): the types a bundler user gets are complete and say what they mean.
import {
  ApiError,
  StreamClient,
  backoffDelay,
  type ClientFrame,
  type ConnectionState,
  type DoneEvent,
  type Generation,
  type GenerationStream,
  type ServerFrame,
  type StreamUpdate,
} from "../../frontend-sample/client.js";

// An app that speaks the WebSocket itself: frames narrow on `type`.
export function onFrame(frame: ServerFrame, socket: { send(text: string): void }): string {
  const reply = (next: ClientFrame): void => socket.send(JSON.stringify(next));
  switch (frame.type) {
    case "auth.ok":
      reply({ type: "subscribe", id: "gen_x", after: 0, ref: frame.user });
      return String(frame.expires_at);
    case "error":
      return `${frame.code} ${frame.retry_after ?? 0} ${frame.id ?? ""}`;
    case "created":
    case "turn":
      return frame.generation.output;
    case "delta":
    case "reasoning":
      return frame.text;
    case "snapshot":
      return frame.text + frame.reasoning;
    case "done":
      return `${frame.status} ${frame.finish_reason ?? ""} ${frame.error?.code ?? ""}`;
    case "conversation_updated":
      return frame.conversation.title;
    default:
      return frame.type;
  }
}

declare function render(text: string): void;

export async function example(): Promise<void> {
  const client = new StreamClient({
    token: async ({ force }) => (force ? "fresh" : "cached"),
    sse: "eventsource",
    reconnect: { initialDelayMs: 250 },
    onStateChange: (state: ConnectionState) => console.log(state),
  });
  const off: () => void = client.on("error", (error: ApiError) => console.log(error.code, error.retryAfter));
  off();

  const generation: Generation = await client.generate({ prompt: "Hello", max_tokens: 64 });
  const stream: GenerationStream = client.subscribe(generation.id, {
    onUpdate: ({ text, replaced }: StreamUpdate) => (replaced ? render(text) : render(text)),
    onDone: (done: DoneEvent) => console.log(done.status, done.usage?.completion_tokens),
  });
  for await (const update of stream) render(update.text);
  const done: DoneEvent = await stream.done;
  const status: "completed" | "failed" | "cancelled" = done.status;
  console.log(status, stream.seq, stream.transport);

  const second = await client.stream({ prompt: "Again" }, { idempotencyKey: "k-1" });
  second.close();
  await client.cancel(second.id);
  const page = await client.list({ limit: 10 });
  console.log(page.results.map((g) => g.output), page.next_cursor, client.savedStreams(), backoffDelay(3));
  try {
    await client.get("gen_missing");
  } catch (error) {
    if (error instanceof ApiError && error.code === "not_found") console.log(error.status);
  }

  // Conversations: a follow-up, a branch, the switch, and another device's turns.
  const followUp: Generation = await client.generate({ prompt: "Shorter?", conversation_id: generation.conversation_id ?? "" });
  await client.generate({ prompt: "Again", parent_id: followUp.parent_id });
  const chats = await client.conversations({ limit: 5 });
  const view = await client.conversation(chats.results[0].id);
  const switched = await client.updateConversation(view.id, { current_turn_id: view.branches[0].turn_id, title: "t" });
  console.log(switched.current_path.length, view.turns.map((turn: Generation) => turn.parent_id));
  const stop: () => void = client.watchConversation(view.id, {
    after: view.turn_count,
    onTurn: (turn: Generation, seq: number) => console.log(turn.id, seq),
    onChange: (changed) => console.log(changed === null ? "deleted" : changed.title),
  });
  stop();
  await client.deleteConversation(view.id);
  client.close();
}
