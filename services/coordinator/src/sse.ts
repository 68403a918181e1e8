const encoder = new TextEncoder();

/**
 * A server-sent-events body fed straight from the engine's callbacks: each event is encoded and
 * enqueued as it happens, so the step loop never waits on a client and no per-token promise
 * chain or extra stream stage sits between a token and the socket.
 */
export class SseStream {
  readonly body: ReadableStream<Uint8Array>;
  private controller!: ReadableStreamDefaultController<Uint8Array>;
  private closed = false;

  /** `onCancel` runs when the reader goes away (the client disconnected). */
  constructor(onCancel: () => void) {
    this.body = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.controller = controller;
      },
      cancel: () => {
        this.closed = true;
        onCancel();
      },
    });
  }

  /** Sends one `data:` event: a string as it is, anything else as JSON. */
  send(data: unknown): void {
    if (this.closed) return;
    this.controller.enqueue(encoder.encode(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.controller.close();
  }

  response(headers: Record<string, string> = {}): Response {
    return new Response(this.body, { status: 200, headers: { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive", ...headers } });
  }
}
