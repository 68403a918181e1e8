import { randomUUID } from "node:crypto";
import type { ServerResponse } from "node:http";
import { Hono, type Context } from "hono";
import type { z } from "zod";
import type { Tokenizer } from "@strata/model";
import { TRACING_OFF } from "@strata/telemetry";
import { ApiError, errorBody, errorResponse, invalidRequest, toApiError } from "./api-errors.ts";
import { autoStreamIntervalMs, ChoiceCoalescer } from "./choice-coalescer.ts";
import { ChatTemplate, ChatTemplateError, DEFAULT_CHAT_TEMPLATE } from "./chat-template.ts";
import { runCompletion, type CompletionJob } from "./completions.ts";
import type { Engine } from "./engine.ts";
import { CoordinatorMetrics } from "./metrics.ts";
import { ModelRegistry, type ServedModel } from "./models.ts";
import type { AdapterManager } from "./adapters.ts";
import { ChatCompletionRequestSchema, CompletionRequestSchema, LoadLoraAdapterRequestSchema, UnloadLoraAdapterRequestSchema, promptOf, stopStrings } from "./openai-schemas.ts";
import { chatFormat, completionFormat, type ResponseFormat, type ResponseMeta } from "./openai-responses.ts";
import type { PipelineClient } from "./pipeline-client.ts";
import { SseStream } from "./sse.ts";
import { readJsonBody } from "./request-body.ts";
import { renderWaterfall } from "./trace-view.ts";
import { CoordinatorTelemetry, type RequestInfo } from "./tracing.ts";

export interface HttpApiOptions {
  engine: Engine;
  tokenizer: Tokenizer;
  modelName: string;
  /** Largest request body accepted (default 1 MiB); larger ones get 413. */
  maxBodyBytes?: number;
  /** Requests waiting for admission beyond which new ones get 429 with Retry-After (default 1024). */
  maxQueuedRequests?: number;
  /** The model's chat template (default: DEFAULT_CHAT_TEMPLATE). */
  chatTemplate?: ChatTemplate;
  /** Names served as `model` (default: just modelName). */
  models?: ModelRegistry;
  /** Loads and unloads LoRA adapters for /v1/load_lora_adapter and /v1/unload_lora_adapter (default: none). */
  adapters?: AdapterManager;
  /** Stages to health-check for GET /ready (default: ready once the API exists). */
  pipeline?: PipelineClient;
  /** Metrics, request spans and the step ring (default: metrics only, tracing off). */
  telemetry?: CoordinatorTelemetry;
  log?: (line: string) => void;
  /**
   * A stream's text chunks go out at most this often; the first token and the finish go at once.
   * 0 sends whatever arrived in each pass of the event loop. "auto" (the default) scales it with
   * the streams open (autoStreamIntervalMs).
   */
  streamIntervalMs?: number | "auto";
}
const DEFAULT_MAX_BODY_BYTES = 1024 * 1024;
const DEFAULT_MAX_QUEUED_REQUESTS = 1024;

async function parseBody<S extends z.ZodType>(c: Context, schema: S, maxBytes: number): Promise<z.infer<S>> {
  return schema.parse(await readJsonBody(c, maxBytes));
}

function messageText(content: string | Array<{ type: "text"; text: string }> | null | undefined): string {
  if (content === undefined || content === null) return "";
  return typeof content === "string" ? content : content.map((p) => p.text).join("");
}

/**
 * The OpenAI-compatible HTTP API. Handlers parse with a schema, call runCompletion and shape the
 * answer; every error becomes an OpenAI error body in api-errors.ts.
 */
export function createHttpApi(opts: HttpApiOptions): Hono {
  const { engine, tokenizer } = opts;
  const models = opts.models ?? opts.adapters?.models ?? new ModelRegistry(opts.modelName);
  const chatTemplate = opts.chatTemplate ?? ChatTemplate.fromSource(DEFAULT_CHAT_TEMPLATE, { fromModel: false });
  const telemetry = opts.telemetry ?? new CoordinatorTelemetry(TRACING_OFF, new CoordinatorMetrics(engine));
  telemetry.engine ??= engine;
  const metrics = telemetry.metrics;
  const maxBodyBytes = opts.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxQueued = opts.maxQueuedRequests ?? DEFAULT_MAX_QUEUED_REQUESTS;
  let openStreams = 0;
  const streamInterval = opts.streamIntervalMs === undefined || opts.streamIntervalMs === "auto" ? () => autoStreamIntervalMs(openStreams) : opts.streamIntervalMs;
  const app = new Hono();

  app.use(async (c, next) => {
    await next();
    metrics.httpResponses.inc({ route: c.req.routePath, status: c.res.status });
  });
  app.onError((error, c) => {
    const apiError = toApiError(error);
    if (apiError.status >= 500) opts.log?.(`${c.req.method} ${c.req.path}: ${error.stack ?? error.message}`);
    return errorResponse(c, apiError);
  });
  app.notFound((c) => errorResponse(c, new ApiError(404, "invalid_request_error", `no route for ${c.req.method} ${c.req.path}`, null, "not_found")));

  app.get("/health", (c) => c.json({ status: "ok" }));
  app.get("/ready", async (c) => {
    const pipeline = opts.pipeline;
    if (!pipeline) return c.json({ status: "ready", stages: [] });
    const stages = await Promise.all(
      pipeline.addresses.map((address, stage) =>
        pipeline.health(stage, 1000).then(
          (h) => ({ stage, address, serving: h.serving, loaded: h.loaded }),
          (error: Error) => ({ stage, address, serving: false, loaded: false, error: error.message }),
        ),
      ),
    );
    const ready = stages.every((s) => s.serving && s.loaded);
    return c.json({ status: ready ? "ready" : "not_ready", stages }, ready ? 200 : 503);
  });
  app.get("/metrics", async (c) => c.body(await metrics.registry.metrics(), 200, { "content-type": metrics.registry.contentType }));

  const modelObject = (m: ServedModel) => ({ id: m.id, object: "model", created: m.createdUnixS, owned_by: "strata", root: m.base ?? m.id, parent: m.base ?? null });
  app.get("/v1/models", (c) => c.json({ object: "list", data: models.list().map(modelObject) }));
  app.get("/v1/models/:id{.+}", (c) => c.json(modelObject(models.resolve(c.req.param("id")))));

  // The block-event consumer's resync point (see KvBlockIndex): hashes current at event_id.
  app.get("/debug/kv/blocks", (c) => {
    const s = engine.blockSnapshot();
    return c.json({ pool_id: s.poolId, event_id: Number(s.eventId), block_hashes: s.blockHashes });
  });

  app.get("/debug/trace", (c) =>
    c.json({ requests: telemetry.log.recentRequests().map((r) => ({ id: r.requestId, trace_id: r.traceId ?? null, finish_reason: r.finishReason ?? null })) }),
  );
  app.get("/debug/trace/:id", (c) => {
    const id = c.req.param("id");
    const request = telemetry.log.request(id);
    if (!request) throw new ApiError(404, "invalid_request_error", `no request ${id} in the coordinator's recent requests`, "id", "not_found");
    return c.text(renderWaterfall(request, telemetry.log.stepsOf(id)));
  });

  const resolveModel = (name: string | null | undefined): ServedModel => models.resolve(name);
  const adapterOf = (model: ServedModel) => (model.kind === "adapter" ? { id: model.id, generation: model.generation ?? 0 } : undefined);

  const adapters = (): AdapterManager => {
    if (!opts.adapters) throw new ApiError(400, "invalid_request_error", "this server does not load LoRA adapters at runtime", null, "lora_disabled");
    return opts.adapters;
  };
  app.post("/v1/load_lora_adapter", async (c) => {
    const req = await parseBody(c, LoadLoraAdapterRequestSchema, maxBodyBytes);
    const { generation, rank } = await adapters().load(req.lora_name, req.lora_path);
    opts.log?.(`loaded LoRA adapter ${req.lora_name} (rank ${rank}, generation ${generation}) from ${req.lora_path}`);
    return c.json({ object: "lora_adapter", id: req.lora_name, rank, generation });
  });
  app.post("/v1/unload_lora_adapter", async (c) => {
    const req = await parseBody(c, UnloadLoraAdapterRequestSchema, maxBodyBytes);
    await adapters().unload(req.lora_name);
    opts.log?.(`unloaded LoRA adapter ${req.lora_name}`);
    return c.json({ object: "lora_adapter", id: req.lora_name, deleted: true });
  });

  /** Shared by both endpoints: admission, the request's trace, then a JSON answer or an SSE stream. */
  async function serve(c: Context, operation: RequestInfo["operation"], format: ResponseFormat, model: ServedModel, job: CompletionJob, stream: { on: boolean; includeUsage: boolean }) {
    if (engine.numWaiting >= maxQueued) {
      throw new ApiError(429, "rate_limit_error", `${engine.numWaiting} requests are already waiting; try again shortly`, null, "too_many_queued_requests", { "Retry-After": "1" });
    }
    const meta: ResponseMeta = { id: `${format.idPrefix}-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: model.id };
    c.header("x-request-id", meta.id);
    const trace = telemetry.startRequest({ requestId: meta.id, operation, model: model.id, promptTokens: job.promptIds.length, maxTokens: job.maxTokens, n: job.n, stream: stream.on });
    const withLogprobs = job.topLogprobs !== undefined;
    // Aborted when the client disconnects: every sequence of the request is cancelled and its KV freed.
    const cancel = new AbortController();
    const outgoing = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
    // Node's response closing before it finished is the client going away; c.req.raw.signal says
    // the same but materializes a web Request per call to do it.
    if (outgoing) outgoing.once("close", () => outgoing.writableFinished || cancel.abort());
    else c.req.raw.signal.addEventListener("abort", () => cancel.abort(), { once: true });
    if (!stream.on) return c.json(format.response(meta, await runCompletion({ engine, tokenizer }, trace, job, cancel.signal), withLogprobs));

    const sse = new SseStream(() => cancel.abort(), outgoing);
    for (const chunk of format.openingChunks(meta, job.n, stream.includeUsage)) sse.send(chunk);
    // Validation errors throw here, before any byte is sent: they become a JSON error response.
    let firstEvent!: () => void;
    const started = new Promise<void>((resolve) => (firstEvent = resolve));
    const chunks = new ChoiceCoalescer((event) => {
      sse.send(format.chunk(meta, event, withLogprobs, stream.includeUsage));
      firstEvent();
    }, streamInterval);
    openStreams++;
    metrics.httpStreamsOpen.inc();
    const done = runCompletion({ engine, tokenizer }, trace, job, cancel.signal, (event) => chunks.push(event));
    done
      .finally(() => {
        openStreams--;
        metrics.httpStreamsOpen.dec();
      })
      .catch(() => {});
    done.then(
      (outcome) => {
        if (stream.includeUsage) sse.send(format.usageChunk(meta, outcome));
        sse.send("[DONE]");
        sse.close();
      },
      (error: unknown) => {
        // Headers are gone: a failure mid-stream travels as an error event, as OpenAI sends it.
        chunks.flush();
        if (!cancel.signal.aborted) sse.send(errorBody(toApiError(error)));
        sse.send("[DONE]");
        sse.close();
      },
    );
    // Headers go out with the first token: a request the engine refuses before it (no room in
    // the KV pool, say) still gets a JSON error with its status, and time to first byte is TTFT.
    const early = await Promise.race([started.then(() => undefined), done.then(() => undefined, (error: unknown) => ({ error }))]);
    if (early) throw early.error;
    return sse.response({ "x-request-id": meta.id });
  }

  const samplingOf = (req: { temperature?: number | null; top_p?: number | null; top_k?: number | null }) => ({
    temperature: req.temperature ?? 1,
    topP: req.top_p ?? 1,
    topK: req.top_k === undefined || req.top_k === null || req.top_k < 0 ? 0 : req.top_k,
  });

  app.post("/v1/completions", async (c) => {
    const req = await parseBody(c, CompletionRequestSchema, maxBodyBytes);
    const model = resolveModel(req.model);
    const prompt = promptOf(req.prompt);
    const job: CompletionJob = {
      promptIds: typeof prompt === "string" ? tokenizer.encode(prompt) : prompt,
      maxTokens: req.max_tokens ?? 16,
      n: req.n ?? 1,
      sampling: samplingOf(req),
      seed: req.seed ?? undefined,
      stop: stopStrings(req.stop),
      topLogprobs: req.logprobs ?? undefined,
      ignoreEos: req.ignore_eos ?? false,
      cacheSalt: req.cache_salt ?? undefined,
      adapter: adapterOf(model),
    };
    return serve(c, "completion", completionFormat(), model, job, { on: req.stream ?? false, includeUsage: req.stream_options?.include_usage ?? false });
  });

  app.post("/v1/chat/completions", async (c) => {
    const req = await parseBody(c, ChatCompletionRequestSchema, maxBodyBytes);
    const model = resolveModel(req.model);
    let promptIds: number[];
    try {
      promptIds = chatTemplate.encode(
        tokenizer,
        req.messages.map((m) => ({ role: m.role, content: messageText(m.content) })),
      );
    } catch (error) {
      if (error instanceof ChatTemplateError) throw invalidRequest(error.message, "messages");
      throw error;
    }
    if (req.top_logprobs !== undefined && req.top_logprobs !== null && !req.logprobs) throw invalidRequest("top_logprobs needs logprobs: true", "top_logprobs");
    const job: CompletionJob = {
      promptIds,
      // No limit given: up to the context (the engine rejects a prompt that leaves no room).
      maxTokens: req.max_completion_tokens ?? req.max_tokens ?? Math.max(1, engine.limits.maxPositionEmbeddings - promptIds.length),
      n: req.n ?? 1,
      sampling: samplingOf(req),
      seed: req.seed ?? undefined,
      stop: stopStrings(req.stop),
      topLogprobs: req.logprobs ? (req.top_logprobs ?? 0) : undefined,
      ignoreEos: req.ignore_eos ?? false,
      cacheSalt: req.cache_salt ?? undefined,
      adapter: adapterOf(model),
    };
    return serve(c, "chat", chatFormat(), model, job, { on: req.stream ?? false, includeUsage: req.stream_options?.include_usage ?? false });
  });

  return app;
}
