import { Agent, request } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { loadGreedyOracle, useNats } from "./support/cluster.ts";
import { startApiServer, type ApiServer } from "./support/api-server.ts";

// Bad input gets OpenAI's error shape and the right status, without touching anything in flight;
// a client that goes away frees its KV on every stage. One running sequence at a time
// (maxNumSeqs 1) and one queued (maxQueuedRequests 1) make the 429 case deterministic.

const MODEL = "stories260K";
const oracle = loadGreedyOracle();
const GREEDY_TOKENS = oracle.steps - oracle.prompt_token_ids.length + 1;
const MAX_BODY_BYTES = 64 * 1024;
const nats = useNats();
let cluster: LocalCluster;
let api: ApiServer;
let client: OpenAI;

beforeAll(async () => {
  await nats.start();
  cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url(), inProcessWorkers: true, maxNumSeqs: 1 });
  api = await startApiServer(cluster, BUNDLED_MODEL_DIR, { maxBodyBytes: MAX_BODY_BYTES, maxQueuedRequests: 1 });
  client = api.client;
});

afterAll(async () => {
  await api?.close();
  await cluster?.stop();
  await nats.stop();
});

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function post(path: string, body: string, headers: Record<string, string> = {}): Promise<{ status: number; body: ErrorBody; headers: Headers }> {
  const res = await fetch(`${api.url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
  return { status: res.status, body: (await res.json()) as ErrorBody, headers: res.headers };
}

async function idle(): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((cluster.engine.numRunning > 0 || cluster.engine.numWaiting > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  expect(cluster.engine.numRunning + cluster.engine.numWaiting).toBe(0);
  expect(await cluster.waitForBlocksFreed()).toEqual([0, 0, 0]);
  expect(cluster.engine.stats().blocksUsed).toBe(0);
}

const expectApiError = async (promise: Promise<unknown>, status: number) => {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(OpenAI.APIError);
  const e = error as InstanceType<typeof OpenAI.APIError>;
  expect(e.status).toBe(status);
  return e;
};

describe("errors in OpenAI's shape", () => {
  it("invalid JSON is a 400", async () => {
    const res = await post("/v1/completions", '{"prompt": "Once", "max_tokens": ');
    expect(res.status).toBe(400);
    expect(res.body.error).toEqual({ message: "request body is not valid JSON", type: "invalid_request_error", param: null, code: "invalid_json" });
  });

  it("wrong types are a 400 naming the field", async () => {
    const e1 = await expectApiError(client.completions.create({ model: MODEL, prompt: "Once", max_tokens: "ten" as unknown as number }), 400);
    expect(e1.param).toBe("max_tokens");
    expect(e1.type).toBe("invalid_request_error");
    const e2 = await expectApiError(client.completions.create({ model: MODEL, prompt: "Once", temperature: 7 }), 400);
    expect(e2.param).toBe("temperature");
    const e3 = await expectApiError(client.chat.completions.create({ model: MODEL, messages: [{ role: "wizard" as "user", content: "hi" }] }), 400);
    expect(e3.param).toBe("messages.0.role");
    const missing = await post("/v1/chat/completions", JSON.stringify({ model: "stories260K" }));
    expect(missing.status).toBe(400);
    expect(missing.body.error.param).toBe("messages");
  });

  it("max_tokens beyond the context is a 400", async () => {
    const e = await expectApiError(client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 600 }), 400);
    expect(e.code).toBe("context_length_exceeded");
    expect(e.param).toBe("max_tokens");
    expect(e.message).toMatch(/maximum context length is 512 tokens/);
  });

  it("an unknown model is a 404", async () => {
    const e = await expectApiError(client.chat.completions.create({ model: "gpt-4o", messages: [{ role: "user", content: "hi" }] }), 404);
    expect(e.code).toBe("model_not_found");
  });

  it("an oversized body is a 413 (the limit is configurable)", async () => {
    const res = await post("/v1/completions", JSON.stringify({ prompt: "a ".repeat(MAX_BODY_BYTES), max_tokens: 1 }));
    expect(res.status).toBe(413);
    expect(res.body.error.code).toBe("request_too_large");
    expect(res.body.error.message).toContain(String(MAX_BODY_BYTES));
  });

  it("an oversized body without a Content-Length (chunked) is a 413 too, and the connection stays usable", async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const chunked = await new Promise<{ status: number; body: ErrorBody }>((resolve, reject) => {
        const req = request(`${api.url}/v1/completions`, { method: "POST", agent, headers: { "content-type": "application/json", "transfer-encoding": "chunked" } }, (res) => {
          let text = "";
          res.setEncoding("utf8").on("data", (c: string) => (text += c));
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as ErrorBody }));
        });
        req.on("error", reject);
        const piece = "a ".repeat(4096);
        req.write(`{"max_tokens": 1, "prompt": "`);
        for (let sent = 0; sent <= 2 * MAX_BODY_BYTES; sent += piece.length) req.write(piece);
        req.end(`"}`);
      });
      expect(chunked.status).toBe(413);
      expect(chunked.body.error.code).toBe("request_too_large");
      // The same keep-alive socket serves the next request.
      const next = await new Promise<number>((resolve, reject) => {
        const req = request(`${api.url}/v1/models`, { agent }, (res) => res.resume().on("end", () => resolve(res.statusCode ?? 0)));
        req.on("error", reject).end();
      });
      expect(next).toBe(200);
    } finally {
      agent.destroy();
    }
  });

  it("an unknown route is a 404 in the same shape", async () => {
    const res = await post("/v1/embeddings", "{}");
    expect(res.status).toBe(404);
    expect(res.body.error.type).toBe("invalid_request_error");
  });

  it("too many queued requests is a 429 with Retry-After; the queued one still completes", async () => {
    // A runs (the only slot), B waits (the whole queue), C is turned away.
    const a = new AbortController();
    const streamA = await client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: 500, ignore_eos: true, stream: true } as unknown as OpenAI.CompletionCreateParamsStreaming, { signal: a.signal });
    const iterA = streamA[Symbol.asyncIterator]();
    await iterA.next();
    const b = client.completions.create({ model: MODEL, prompt: "Once upon a time", max_tokens: GREEDY_TOKENS, temperature: 0 });
    while (cluster.engine.numWaiting < 1) await new Promise((r) => setTimeout(r, 5));
    const c = await post("/v1/completions", JSON.stringify({ prompt: "Once upon a time", max_tokens: 4 }));
    expect(c.status).toBe(429);
    expect(c.headers.get("retry-after")).toBe("1");
    expect(c.body.error.code).toBe("too_many_queued_requests");
    a.abort();
    const resB = await b;
    expect(oracle.prompt + resB.choices[0].text).toBe(oracle.text);
    await idle();
  });

  it("malformed requests never disturb a stream in flight", async () => {
    const stream = await client.completions.create({ model: MODEL, prompt: oracle.prompt, max_tokens: GREEDY_TOKENS, temperature: 0, stream: true });
    let text = "";
    let sentBadOnes = false;
    const statuses: number[] = [];
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? "";
      if (!sentBadOnes) {
        sentBadOnes = true;
        // While the stream is mid-generation: every kind of bad request, all at once.
        const bad = await Promise.all([
          post("/v1/completions", "{oops"),
          post("/v1/completions", JSON.stringify({ prompt: 42 })),
          post("/v1/completions", JSON.stringify({ prompt: "x", max_tokens: 10_000 })),
          post("/v1/completions", JSON.stringify({ prompt: "x", model: "nope" })),
          post("/v1/completions", JSON.stringify({ prompt: "x".repeat(2 * MAX_BODY_BYTES) })),
          post("/v1/chat/completions", JSON.stringify({ messages: [] })),
          post("/v1/completions", JSON.stringify({ prompt: [1, 2, 99999] })),
        ]);
        statuses.push(...bad.map((r) => r.status));
      }
    }
    expect(statuses).toEqual([400, 400, 400, 404, 413, 400, 400]);
    expect(oracle.prompt + text).toBe(oracle.text);
    await idle();
  });
});

describe("a client that disconnects", () => {
  it("mid-stream cancels its request and frees its KV on every stage", async () => {
    const evictsBefore = abortedEvicts();
    const controller = new AbortController();
    const stream = await client.completions.create(
      { model: MODEL, prompt: "Once upon a time", max_tokens: 500, ignore_eos: true, stream: true } as unknown as OpenAI.CompletionCreateParamsStreaming,
      { signal: controller.signal },
    );
    let chunks = 0;
    let blocksWhileStreaming = 0;
    // The client either ends the iteration quietly or throws an abort error; both are a disconnect.
    await (async () => {
      for await (const _ of stream) {
        if (++chunks === 5) {
          blocksWhileStreaming = cluster.engine.stats().blocksUsed;
          controller.abort();
        }
      }
    })().catch(() => {});
    expect(chunks).toBeLessThan(100);
    expect(blocksWhileStreaming).toBeGreaterThan(0);
    await idle();
    expect(abortedEvicts()).toBe(evictsBefore + 1);
  });

  it("while waiting for a non-streamed answer does the same", async () => {
    const evictsBefore = abortedEvicts();
    const controller = new AbortController();
    const pending = fetch(`${api.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ prompt: "Once upon a time", max_tokens: 500, ignore_eos: true }),
      signal: controller.signal,
    });
    while (cluster.engine.stats().blocksUsed === 0) await new Promise((r) => setTimeout(r, 5));
    controller.abort();
    await expect(pending).rejects.toThrow();
    await idle();
    expect(abortedEvicts()).toBe(evictsBefore + 1);
  });
});

function abortedEvicts(): number {
  return cluster.events.eventCounts().find((c) => c.direction === "published" && c.kind === "kv_evict" && c.reason === "aborted")?.count ?? 0;
}
