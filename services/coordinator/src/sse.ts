import type { ServerResponse } from "node:http";
import { RESPONSE_ALREADY_SENT } from "@hono/node-server/utils/response";

const encoder = new TextEncoder();

/**
 * A server-sent-events body fed straight from the engine's callbacks: each event is encoded and
 * sent as it happens, so the step loop never waits on a client and no per-token promise chain
 * sits between a token and the socket. Served by @hono/node-server, events go to the Node
 * response directly (a web ReadableStream in between cost more per token than the rest of the
 * API); elsewhere they go through a ReadableStream body.
 */
export class SseStream {
  private controller: ReadableStreamDefaultController<Uint8Array> | undefined;
  private readonly body: ReadableStream<Uint8Array> | undefined;
  // Node: events before response() are held, so an error before the first one is still JSON.
  private held: string[] | undefined = [];
  private closed = false;
  private ended = false;
  private corked = false;

  /** `onCancel` runs when the client goes away before the stream ends. */
  constructor(
    private readonly onCancel: () => void,
    private readonly outgoing?: ServerResponse,
  ) {
    if (outgoing) {
      outgoing.on("close", () => {
        if (!this.ended) {
          this.closed = true;
          onCancel();
        }
      });
      return;
    }
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
    const event = `data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`;
    if (!this.outgoing) this.controller!.enqueue(encoder.encode(event));
    else if (this.held) this.held.push(event);
    else {
      // Events of one pass of the event loop (a decode run's held steps arrive together) leave in
      // one socket write instead of one each.
      if (!this.corked) {
        this.corked = true;
        this.outgoing.cork();
        setImmediate(() => {
          this.corked = false;
          this.outgoing!.uncork();
        });
      }
      this.outgoing.write(event);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.outgoing) this.controller!.close();
    else if (!this.held) this.end();
  }

  private end(): void {
    this.ended = true;
    this.outgoing!.end();
  }

  /** Starts the response: the status line and headers, then every event so far. */
  response(headers: Record<string, string> = {}): Response {
    const all = { "content-type": "text/event-stream", "cache-control": "no-cache", connection: "keep-alive", ...headers };
    if (!this.outgoing) return new Response(this.body, { status: 200, headers: all });
    this.outgoing.writeHead(200, all);
    const held = this.held!;
    this.held = undefined;
    if (held.length > 0) this.outgoing.write(held.join(""));
    if (this.closed) this.end();
    return RESPONSE_ALREADY_SENT;
  }
}
