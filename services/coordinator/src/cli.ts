import { parseArgs } from "node:util";
import { serve } from "@hono/node-server";
import { BUNDLED_MODEL_DIR, loadTokenizer, openModel, type Tokenizer } from "@strata/model";
import { parseKvDtype, type KvDtype } from "@strata/kv";
import { DEFAULT_PLAN_LOAD, PartitionError, parsePartition, type Partition } from "@strata/planner";
import { otlpTracesUrlFromEnv, startTracing, traceSampleRatioFromEnv } from "@strata/telemetry";
import { ChatTemplate } from "./chat-template.ts";
import { LocalCluster, servedModelName, type ClusterOptions } from "./cluster.ts";
import { checkContextLength } from "./engine.ts";
import { createHttpApi } from "./http-api.ts";
import { LoadProgressView } from "./progress.ts";

const USAGE = `usage: strata <command> [options]

commands:
  start      start a local cluster (nats-server, workers, coordinator) and serve the HTTP API
  generate   start a cluster, generate one completion, tear it down
  trace      draw one request's steps across the stages, from a running coordinator's trace ring

common options:
  --model DIR            llama2.c checkpoint folder or Hugging Face Llama folder (default: bundled stories260K)
  --workers N            worker processes, one pipeline stage each (default 2)
  --partition A-B,...    layer ranges by hand, e.g. 0-1,1-4,4-5 (default: balanced by the bytes
                         each stage reads per decode step, the LM head on the last stage)
  --plan-batch N         sequences per micro-batch the default partition is balanced for (default 16)
  --plan-context-tokens N  context per sequence it is balanced for (default 1024)
  --plan-shared-prefix-tokens N  of that context, a prefix every sequence shares (a cached system
                         prompt), whose K/V a stage reads once per micro-batch (default 0)
  --device cpu|cuda      onnxruntime execution provider (default cpu)
  --nats-url URL         NATS server to use when reachable (default $NATS_URL or nats://127.0.0.1:4222);
                         otherwise nats-server is started from PATH on a free port
  --kv-cache-bytes N     KV cache budget per worker (default 128 MiB)
  --kv-memory-fraction F instead: each worker's KV cache is this fraction (0 to 1) of the memory
                         its host has available once its weights are loaded
  --block-size N         KV block size in tokens (default 16)
  --threads N            onnxruntime intra-op threads per worker (default 1)
  --compute-thread       each worker computes on a thread of its own, so it reads the next
                         micro-batch and answers health checks while a step computes (for long
                         steps; short ones lose more to the hand-offs, see the worker's flag)
  --kv-dtype D           KV cache element type: fp32, fp16, int8 or fp8 (e4m3) (default fp32)
  --max-num-seqs N       running sequences at most (default 256)
  --max-num-batched-tokens N  tokens per micro-batch at most (default 2048)
  --max-prefill-chunk N  longest prompt piece per step; longer prompts are chunked (default: the batch budget)
  --no-prefix-caching    do not share KV blocks of equal prompt prefixes
  --lora NAME=PATH       serve a PEFT LoRA adapter folder as model NAME (repeatable)
  --max-lora-rank N      largest adapter rank servable, also for POST /v1/load_lora_adapter
                         (default 16 with --lora, else 0: no adapter support)
  --kv-allocator A       paged (default) or contiguous: max-length reservations per sequence, the
                         pre-PagedAttention baseline, for comparison
  --no-pipelining        one micro-batch in flight instead of one per stage
  --num-scheduler-steps N  longest decode run: decode batches loop through the stages up to N
                         steps before the coordinator schedules again (default 64; runs are
                         kept near 25 ms from recent step times, and at least 8 steps)
  --lost-batch-wait-s N  requests whose batch a stage lost (its worker died) are recomputed, with
                         the same output, once the stages are back; how long they wait for that
                         before failing (default 60; 0: they fail at once)

start:
  --host H --port P      HTTP address (default 127.0.0.1:8000)
  --max-body-bytes N     largest request body; larger ones get 413 (default 1 MiB)
  --max-queued-requests N  requests waiting for admission beyond which new ones get 429 (default 1024)
  --stream-interval-ms N|auto  a stream's text chunks go out at most this often; the first token
                         and the finish go at once (0: every pass of the event loop; default auto:
                         1.5 ms per open stream, at most 25 ms)
  --trace-sample-ratio R  fraction of requests traced, 0 to 1 (default $OTEL_TRACES_SAMPLER_ARG with
                         OTEL_TRACES_SAMPLER=traceidratio, else 1); their steps and stage spans follow
  Traces export over OTLP/HTTP to $OTEL_EXPORTER_OTLP_ENDPOINT when it is set.

trace:
  --request ID           the request id (the response's "id", also its x-request-id header)
  --url URL              the coordinator (default http://127.0.0.1:8000); without --request, lists recent ids

generate:
  --prompt TEXT          prompt text (default "")
  --max-tokens N         tokens to generate (default 64)
  --temperature T        0 is greedy (default 1.0)
  --top-p P --top-k K    nucleus and top-k filtering (default off)
  --seed S               sampling seed (default random)
  --json                 print one JSON object on the last line instead of streaming text
`;

class UsageError extends Error {}

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    model: { type: "string" },
    workers: { type: "string", default: "2" },
    partition: { type: "string" },
    "plan-batch": { type: "string" },
    "plan-context-tokens": { type: "string" },
    "plan-shared-prefix-tokens": { type: "string" },
    "kv-memory-fraction": { type: "string" },
    device: { type: "string", default: "cpu" },
    "nats-url": { type: "string" },
    "kv-cache-bytes": { type: "string" },
    "block-size": { type: "string" },
    threads: { type: "string", default: "1" },
    "compute-thread": { type: "boolean", default: false },
    "max-num-seqs": { type: "string" },
    "max-num-batched-tokens": { type: "string" },
    "max-prefill-chunk": { type: "string" },
    "no-prefix-caching": { type: "boolean", default: false },
    "no-pipelining": { type: "boolean", default: false },
    "num-scheduler-steps": { type: "string" },
    "lost-batch-wait-s": { type: "string" },
    "kv-dtype": { type: "string", default: "fp32" },
    "kv-allocator": { type: "string", default: "paged" },
    lora: { type: "string", multiple: true },
    "max-lora-rank": { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "8000" },
    prompt: { type: "string", default: "" },
    "max-tokens": { type: "string", default: "64" },
    temperature: { type: "string", default: "1.0" },
    "top-p": { type: "string", default: "1" },
    "top-k": { type: "string", default: "0" },
    seed: { type: "string" },
    json: { type: "boolean", default: false },
    "max-body-bytes": { type: "string" },
    "max-queued-requests": { type: "string" },
    "stream-interval-ms": { type: "string" },
    "trace-sample-ratio": { type: "string" },
    request: { type: "string" },
    url: { type: "string", default: "http://127.0.0.1:8000" },
    help: { type: "boolean", short: "h", default: false },
  },
});

function numberOption(name: string, value: string | undefined, check: (n: number) => boolean = () => true): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n) || !check(n)) throw new UsageError(`--${name}: "${value}" is not a valid value`);
  return n;
}

const secondsToMs = (seconds: number | undefined) => (seconds === undefined ? undefined : seconds * 1000);

async function clusterOptions(): Promise<ClusterOptions & { tokenizer: Tokenizer; contextTokens: number }> {
  const modelDir = values.model ?? BUNDLED_MODEL_DIR;
  const workers = numberOption("workers", values.workers, (n) => Number.isInteger(n) && n >= 1)!;
  const device = values.device!;
  if (device !== "cpu" && device !== "cuda") throw new UsageError(`--device must be cpu or cuda, got "${device}"`);
  const source = await openModel(modelDir);
  const { numLayers, maxPositionEmbeddings: contextTokens } = source.config;
  await source.close();
  const partition = values.partition ? partitionOption(values.partition, numLayers) : undefined;
  const tokenizer = await loadTokenizer(modelDir);
  return {
    tokenizer,
    contextTokens,
    modelDir,
    workers: partition?.length ?? workers,
    partition,
    planLoad: planLoadOption(),
    natsUrl: values["nats-url"] ?? process.env.NATS_URL ?? "nats://127.0.0.1:4222",
    device,
    ...kvBudgetOption(),
    blockSizeTokens: numberOption("block-size", values["block-size"], (n) => Number.isInteger(n) && n > 0),
    threadsPerWorker: numberOption("threads", values.threads, (n) => Number.isInteger(n) && n > 0),
    computeThread: values["compute-thread"],
    maxNumSeqs: numberOption("max-num-seqs", values["max-num-seqs"], (n) => Number.isInteger(n) && n > 0),
    maxNumBatchedTokens: numberOption("max-num-batched-tokens", values["max-num-batched-tokens"], (n) => Number.isInteger(n) && n > 0),
    maxPrefillChunkTokens: numberOption("max-prefill-chunk", values["max-prefill-chunk"], (n) => Number.isInteger(n) && n > 0),
    enablePrefixCaching: !values["no-prefix-caching"],
    pipelining: !values["no-pipelining"],
    numSchedulerSteps: numberOption("num-scheduler-steps", values["num-scheduler-steps"], (n) => Number.isInteger(n) && n >= 1),
    lostBatchWaitMs: secondsToMs(numberOption("lost-batch-wait-s", values["lost-batch-wait-s"], (n) => n >= 0)),
    kvDtype: kvDtypeOption(values["kv-dtype"]!),
    kvAllocator: kvAllocatorOption(values["kv-allocator"]!),
    loras: (values.lora ?? []).map(loraOption),
    maxLoraRank: numberOption("max-lora-rank", values["max-lora-rank"], (n) => Number.isInteger(n) && n >= 0),
  };
}

function kvBudgetOption(): Pick<ClusterOptions, "kvCacheBytes" | "kvMemoryFraction"> {
  const kvCacheBytes = numberOption("kv-cache-bytes", values["kv-cache-bytes"], (n) => n > 0);
  const kvMemoryFraction = numberOption("kv-memory-fraction", values["kv-memory-fraction"], (n) => n > 0 && n <= 1);
  if (kvCacheBytes !== undefined && kvMemoryFraction !== undefined) throw new UsageError("--kv-cache-bytes and --kv-memory-fraction each set the KV budget: give one");
  return { kvCacheBytes, kvMemoryFraction };
}

function planLoadOption(): ClusterOptions["planLoad"] {
  const batch = numberOption("plan-batch", values["plan-batch"], (n) => Number.isInteger(n) && n > 0);
  const contextTokens = numberOption("plan-context-tokens", values["plan-context-tokens"], (n) => Number.isInteger(n) && n > 0);
  const sharedPrefixTokens = numberOption("plan-shared-prefix-tokens", values["plan-shared-prefix-tokens"], (n) => Number.isInteger(n) && n >= 0);
  const context = contextTokens ?? DEFAULT_PLAN_LOAD.contextTokens;
  if (sharedPrefixTokens !== undefined && sharedPrefixTokens > context) {
    throw new UsageError(`--plan-shared-prefix-tokens: ${sharedPrefixTokens} is more than the ${context} tokens of context planned for`);
  }
  return { batch, contextTokens, sharedPrefixTokens };
}

function loraOption(value: string): { name: string; path: string } {
  const at = value.indexOf("=");
  if (at <= 0 || at === value.length - 1) throw new UsageError(`--lora takes name=path (a PEFT LoRA folder), got "${value}"`);
  return { name: value.slice(0, at), path: value.slice(at + 1) };
}

function kvAllocatorOption(value: string): "paged" | "contiguous" {
  if (value === "paged" || value === "contiguous") return value;
  throw new UsageError(`--kv-allocator must be paged or contiguous, got "${value}"`);
}

function kvDtypeOption(value: string): KvDtype {
  try {
    return parseKvDtype(value);
  } catch (error) {
    throw new UsageError(`--kv-dtype: ${(error as Error).message}`);
  }
}

function partitionOption(spec: string, numLayers: number): Partition {
  try {
    return parsePartition(spec, numLayers);
  } catch (error) {
    if (error instanceof PartitionError) throw new UsageError(`--partition: ${error.message}`);
    throw error;
  }
}

async function startCluster(opts: ClusterOptions): Promise<LocalCluster> {
  const progress = new LoadProgressView(Array.from({ length: opts.workers }, (_, i) => `worker ${i}`));
  return LocalCluster.start({
    ...opts,
    onLoadProgress: (stage, loaded, total) => progress.update(stage, loaded, total),
    log: (line) => process.stderr.write(`${line}\n`),
  });
}

async function generate(): Promise<void> {
  const { tokenizer, contextTokens, ...opts } = await clusterOptions();
  const maxTokens = numberOption("max-tokens", values["max-tokens"], (n) => Number.isInteger(n) && n > 0)!;
  const sampling = {
    temperature: numberOption("temperature", values.temperature, (n) => n >= 0)!,
    topP: numberOption("top-p", values["top-p"], (n) => n > 0 && n <= 1)!,
    topK: numberOption("top-k", values["top-k"], (n) => Number.isInteger(n) && n >= 0)!,
  };
  const seed = numberOption("seed", values.seed, Number.isInteger);
  const promptIds = tokenizer.encode(values.prompt!);
  // Refuse before starting workers: the engine would refuse too, but only after the whole cluster loaded.
  checkContextLength(promptIds.length, maxTokens, contextTokens);
  const cluster = await startCluster(opts);
  try {
    const decoder = tokenizer.createStreamDecoder();
    if (!values.json) process.stdout.write(values.prompt!);
    const started = performance.now();
    const result = await cluster.engine.generate({
      promptIds,
      maxTokens,
      sampling,
      seed,
      onToken: values.json ? undefined : (id) => process.stdout.write(decoder.push(id)),
    });
    const seconds = (performance.now() - started) / 1000;
    if (values.json) {
      process.stdout.write(
        JSON.stringify({
          prompt_token_ids: result.promptTokenIds,
          token_ids: result.tokenIds,
          text: tokenizer.decode(result.tokenIds),
          finish_reason: result.finishReason,
          workers: cluster.partition.length,
          partition: cluster.partition,
          tokens_per_s: Math.round((result.tokenIds.length / seconds) * 10) / 10,
        }) + "\n",
      );
    } else {
      process.stdout.write(decoder.flush() + "\n");
      process.stderr.write(`[${result.tokenIds.length} tokens, ${(result.tokenIds.length / seconds).toFixed(1)} tok/s, finish_reason=${result.finishReason}]\n`);
    }
  } finally {
    await cluster.stop();
  }
}

async function start(): Promise<void> {
  const { tokenizer, ...opts } = await clusterOptions();
  const port = numberOption("port", values.port, (n) => Number.isInteger(n) && n >= 0 && n < 65536)!;
  const maxBodyBytes = numberOption("max-body-bytes", values["max-body-bytes"], (n) => Number.isInteger(n) && n > 0);
  const maxQueuedRequests = numberOption("max-queued-requests", values["max-queued-requests"], (n) => Number.isInteger(n) && n >= 0);
  const streamIntervalMs = values["stream-interval-ms"] === "auto" ? "auto" : numberOption("stream-interval-ms", values["stream-interval-ms"], (n) => Number.isFinite(n) && n >= 0);
  const chatTemplate = await ChatTemplate.load(opts.modelDir);
  // This process is the coordinator: its spans go through the NodeSDK; worker processes inherit the environment.
  let traceSampleRatio: number;
  try {
    traceSampleRatio = numberOption("trace-sample-ratio", values["trace-sample-ratio"], (n) => n >= 0 && n <= 1) ?? traceSampleRatioFromEnv(process.env);
  } catch (error) {
    throw error instanceof UsageError ? error : new UsageError((error as Error).message);
  }
  const tracing = startTracing({ serviceName: "strata-coordinator", tracesUrl: otlpTracesUrlFromEnv(process.env), global: true });
  const cluster = await startCluster({ ...opts, tracing, traceSampleRatio });
  const modelName = servedModelName(opts.modelDir);
  const app = createHttpApi({
    engine: cluster.engine,
    tokenizer,
    modelName,
    adapters: cluster.adapters,
    chatTemplate,
    pipeline: cluster.pipeline,
    telemetry: cluster.telemetry,
    maxBodyBytes,
    maxQueuedRequests,
    streamIntervalMs,
    log: (line) => process.stderr.write(`${line}\n`),
  });
  const server = serve({ fetch: app.fetch, hostname: values.host, port }, (info) => {
    const base = `http://${values.host}:${info.port}`;
    process.stdout.write(
      `Strata is serving ${modelName} over ${cluster.partition.length} workers (layers ${cluster.partition.map(([a, b]) => `${a}-${b}`).join(", ")}), NATS ${cluster.natsUrl}\n` +
        `Listening on ${base}\n\n` +
        `  curl ${base}/v1/completions -H 'Content-Type: application/json' \\\n` +
        `    -d '{"prompt": "Once upon a time", "max_tokens": 64, "temperature": 0}'\n\n` +
        `Metrics: ${base}/metrics (workers: ${cluster.workerMetricsUrls.filter((u) => u).join(", ") || "none"})\n` +
        `Tracing: ${tracing.enabled ? `OTLP to ${otlpTracesUrlFromEnv(process.env)}, ${traceSampleRatio * 100}% of requests` : "off (set OTEL_EXPORTER_OTLP_ENDPOINT)"}; ` +
        `waterfall of a request: pnpm strata trace --url ${base} --request <id>\n\n` +
        `Press Ctrl-C to stop.\n`,
    );
  });
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    process.stderr.write("\nstopping...\n");
    server.close();
    await cluster.stop();
    await tracing.shutdown();
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

/** Prints the coordinator's waterfall of one request (GET /debug/trace/<id>), or its recent request ids. */
async function traceRequest(): Promise<void> {
  const base = values.url!.replace(/\/+$/, "");
  const url = values.request ? `${base}/debug/trace/${encodeURIComponent(values.request)}` : `${base}/debug/trace`;
  let res: Response;
  try {
    res = await fetch(url);
  } catch (error) {
    throw new Error(`cannot reach the coordinator at ${base}: ${(error as Error).message}`);
  }
  if (!res.ok) {
    const body = (await res.json().catch(() => ({}))) as { error?: { message?: string } };
    throw new Error(body.error?.message ?? `${url} answered ${res.status}`);
  }
  if (values.request) {
    process.stdout.write(await res.text());
    return;
  }
  const { requests } = (await res.json()) as { requests: Array<{ id: string; trace_id: string | null; finish_reason: string | null }> };
  if (requests.length === 0) process.stdout.write("no requests yet\n");
  for (const r of requests) process.stdout.write(`${r.id}  ${r.finish_reason ?? "running"}${r.trace_id ? `  trace ${r.trace_id}` : ""}\n`);
}

const command = positionals[0];
try {
  if (values.help || !command) {
    process.stdout.write(USAGE);
  } else if (command === "generate") {
    await generate();
  } else if (command === "start") {
    await start();
  } else if (command === "trace") {
    await traceRequest();
  } else {
    throw new UsageError(`unknown command "${command}"`);
  }
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n`);
  if (error instanceof UsageError) process.stderr.write(`\n${USAGE}`);
  process.exit(error instanceof UsageError ? 2 : 1);
}
