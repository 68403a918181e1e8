import { Agent, request } from "node:http";
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

const agent = new Agent({ keepAlive: true, maxSockets: 256 });

/**
 * POSTs a streamed /v1/completions request and reads its server-sent events as they arrive,
 * timing the first token and the rest. Token counts come from the final usage chunk. node:http
 * rather than fetch: a load client should cost the machine as little as it can.
 */
export function streamCompletion(baseUrl: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<StreamResult> {
  const started = performance.now();
  const payload = JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } });
  return new Promise((resolve) => {
    let first: number | undefined;
    let last = started;
    let completionTokens = 0;
    let error: string | undefined;
    let status = 0;
    let buffered = "";
    const done = (failure?: string) => {
      const e2eMs = performance.now() - started;
      error ??= failure;
      resolve({
        ok: error === undefined && status === 200,
        status,
        error,
        ttftMs: first === undefined ? undefined : first - started,
        tpotMs: first !== undefined && completionTokens > 1 ? (last - first) / (completionTokens - 1) : undefined,
        e2eMs,
        completionTokens,
      });
    };
    const req = request(`${baseUrl}/v1/completions`, { method: "POST", agent, signal, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } }, (res) => {
      status = res.statusCode ?? 0;
      res.setEncoding("utf8");
      if (status !== 200) {
        let text = "";
        res.on("data", (chunk: string) => (text += chunk));
        res.on("end", () => done(text.slice(0, 200)));
        return;
      }
      res.on("data", (chunk: string) => {
        buffered += chunk;
        let end: number;
        while ((end = buffered.indexOf("\n\n")) >= 0) {
          const event = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
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
      });
      res.on("end", () => done());
      res.on("error", (e) => done(e.message));
    });
    req.on("error", (e) => done(e.message));
    req.end(payload);
  });
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
