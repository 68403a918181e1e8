import { createConnection, type Socket } from "node:net";
import { performance } from "node:perf_hooks";

/** One streamed completion as a client saw it. */
export interface StreamResult {
  ok: boolean;
  /** HTTP status; 0 when the connection failed. */
  status: number;
  error?: string;
  /** Request sent until the first text arrived. */
  ttftMs?: number;
  /** Mean gap between tokens after the first. */
  tpotMs?: number;
  e2eMs: number;
  completionTokens: number;
}

interface Chunk {
  choices?: Array<{ text?: string }>;
  usage?: { completion_tokens: number } | null;
  error?: { message: string };
}

/** Idle keep-alive connections by "host:port". */
const idle = new Map<string, Socket[]>();

/** What the status line and headers of a response said. */
interface ResponseHead {
  status: number;
  chunked: boolean;
  contentLength: number | undefined;
  keepAlive: boolean;
}

const CRLF2 = Buffer.from("\r\n\r\n");
const CRLF = Buffer.from("\r\n");
const EVENT_END = Buffer.from("\n\n");

function parseHead(text: string): ResponseHead {
  const lines = text.split("\r\n");
  const status = Number(lines[0].split(" ")[1]);
  let chunked = false;
  let contentLength: number | undefined;
  let keepAlive = true;
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(":");
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim().toLowerCase();
    if (name === "transfer-encoding") chunked = value.includes("chunked");
    else if (name === "content-length") contentLength = Number(value);
    else if (name === "connection") keepAlive = value !== "close";
  }
  return { status, chunked, contentLength, keepAlive };
}

function openSocket(url: URL): Socket {
  const socket = createConnection({ host: url.hostname.replace(/^\[|\]$/g, ""), port: Number(url.port || 80), noDelay: true });
  // An idle pooled connection the server resets must not throw: it is dropped when next taken.
  socket.on("error", () => {});
  return socket;
}

/**
 * One HTTP/1.1 request on a raw keep-alive socket, its body handed over as it arrives (chunked,
 * Content-Length or until close). A load client here shares 2 cores with the cluster it
 * measures (and, in the bench, the coordinator's event loop): node:http's per-response stream
 * objects and parser callbacks cost it about as much per streamed token as the server's own
 * work, so this speaks the protocol directly, as wrk and k6 do.
 */
function rawRequest(url: URL, payload: string, onHead: (head: ResponseHead) => void, onBody: (bytes: Buffer) => void, signal: AbortSignal | undefined, retried = false): Promise<void> {
  const key = `${url.hostname}:${url.port || 80}`;
  let pooled: Socket | undefined;
  // Connections the server closed while idle are dropped.
  do pooled = idle.get(key)?.pop();
  while (pooled && (pooled.destroyed || pooled.readyState !== "open"));
  const socket = pooled ?? openSocket(url);
  const request = `POST ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\nConnection: keep-alive\r\n\r\n${payload}`;
  return new Promise<void>((resolve, reject) => {
    let pending: Buffer = Buffer.alloc(0);
    let head: ResponseHead | undefined;
    let bodyLeft = 0; // Content-Length bytes still to come
    // Chunked: a size line next, the chunk's data (chunkLeft bytes), the CRLF after it, or the last CRLF.
    let chunkState: "size" | "data" | "dataEnd" | "lastEnd" = "size";
    let chunkLeft = 0;
    let received = false;
    let finished = false;
    const cleanup = () => {
      socket.off("data", onData);
      socket.off("error", onError);
      socket.off("close", onClose);
      signal?.removeEventListener("abort", onAbort);
    };
    const finish = () => {
      finished = true;
      cleanup();
      if (head?.keepAlive && !socket.destroyed) {
        const list = idle.get(key) ?? [];
        list.push(socket);
        idle.set(key, list);
      } else socket.destroy();
      resolve();
    };
    const fail = (error: Error) => {
      if (finished) return;
      finished = true;
      cleanup();
      socket.destroy();
      // A kept-alive connection the server closed meanwhile: once more on a fresh one.
      if (pooled && !received && !retried && !signal?.aborted) rawRequest(url, payload, onHead, onBody, signal, true).then(resolve, reject);
      else reject(error);
    };
    const onError = (error: Error) => fail(error);
    const onClose = () => {
      if (head && !head.chunked && head.contentLength === undefined) return finish(); // body ends with the connection
      fail(new Error("connection closed before the response ended"));
    };
    const onAbort = () => fail(new Error("aborted"));
    const onData = (data: Buffer) => {
      received = true;
      pending = pending.length === 0 ? data : Buffer.concat([pending, data]);
      if (!head) {
        const at = pending.indexOf(CRLF2);
        if (at < 0) return;
        head = parseHead(pending.subarray(0, at).toString("latin1"));
        pending = pending.subarray(at + 4);
        bodyLeft = head.contentLength ?? 0;
        onHead(head);
        if (!head.chunked && head.contentLength === 0) return finish();
      }
      if (!head.chunked) {
        if (head.contentLength === undefined) {
          onBody(pending);
          pending = Buffer.alloc(0);
          return;
        }
        const take = pending.subarray(0, bodyLeft);
        bodyLeft -= take.length;
        pending = pending.subarray(take.length);
        onBody(take);
        if (bodyLeft === 0) finish();
        return;
      }
      for (;;) {
        if (chunkState === "size") {
          const at = pending.indexOf(CRLF);
          if (at < 0) return;
          const size = parseInt(pending.subarray(0, at).toString("latin1"), 16);
          if (!Number.isFinite(size)) return fail(new Error("malformed chunked response"));
          pending = pending.subarray(at + 2);
          chunkLeft = size;
          chunkState = size === 0 ? "lastEnd" : "data";
        } else if (chunkState === "data") {
          if (pending.length === 0) return;
          const take = pending.subarray(0, chunkLeft);
          onBody(take);
          chunkLeft -= take.length;
          pending = pending.subarray(take.length);
          if (chunkLeft > 0) return;
          chunkState = "dataEnd";
        } else {
          // The CRLF after a chunk's data, or after the last (empty) chunk: no trailers are sent here.
          if (pending.length < 2) return;
          pending = pending.subarray(2);
          if (chunkState === "lastEnd") return finish();
          chunkState = "size";
        }
      }
    };
    socket.on("data", onData);
    socket.on("error", onError);
    socket.on("close", onClose);
    signal?.addEventListener("abort", onAbort, { once: true });
    socket.write(request);
  });
}

/**
 * POSTs a streamed /v1/completions request and reads its server-sent events as they arrive,
 * timing the first token and the rest. Token counts come from the final usage chunk. Every event
 * is parsed; the connection is a raw keep-alive socket (see rawRequest).
 */
export function streamCompletion(baseUrl: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<StreamResult> {
  const started = performance.now();
  const payload = JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } });
  let first: number | undefined;
  let last = started;
  let completionTokens = 0;
  let error: string | undefined;
  let status = 0;
  let events: Buffer = Buffer.alloc(0);
  let text = "";
  const onBody = (bytes: Buffer) => {
    if (status !== 200) {
      if (text.length < 200) text += bytes.toString("utf8");
      return;
    }
    events = events.length === 0 ? bytes : Buffer.concat([events, bytes]);
    let end: number;
    while ((end = events.indexOf(EVENT_END)) >= 0) {
      const event = events.subarray(0, end).toString("utf8");
      events = events.subarray(end + 2);
      if (!event.startsWith("data: ") || event === "data: [DONE]") continue;
      const parsed = JSON.parse(event.slice(6)) as Chunk;
      if (parsed.error) error = parsed.error.message;
      if (parsed.usage) completionTokens = parsed.usage.completion_tokens;
      if (parsed.choices?.some((c) => (c.text ?? "").length > 0)) {
        const now = performance.now();
        first ??= now;
        last = now;
      }
    }
  };
  const done = (failure?: string): StreamResult => {
    error ??= failure;
    return {
      ok: error === undefined && status === 200,
      status,
      error,
      ttftMs: first === undefined ? undefined : first - started,
      tpotMs: first !== undefined && completionTokens > 1 ? (last - first) / (completionTokens - 1) : undefined,
      e2eMs: performance.now() - started,
      completionTokens,
    };
  };
  return rawRequest(new URL(`${baseUrl}/v1/completions`), payload, (head) => (status = head.status), onBody, signal).then(
    () => done(status === 200 ? undefined : text.slice(0, 200)),
    (e: Error) => done(e.message),
  );
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}

/** Load tests here target only this machine. */
export function assertLoopback(url: string): void {
  const host = new URL(url).hostname.replace(/^\[|\]$/g, "");
  if (!(host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host))) {
    throw new Error(`--url must be a loopback address (127.0.0.0/8, localhost or [::1]), got ${host}`);
  }
}
