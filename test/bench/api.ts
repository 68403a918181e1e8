import { fork } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import { serve, type ServerType } from "@hono/node-server";
import { createHttpApi, type LocalCluster } from "@strata/coordinator";
import { BUNDLED_MODEL_DIR, loadTokenizer, openModel } from "@strata/model";
import { GREEDY } from "@strata/sampling";
import { streamCompletion } from "../../loadtest/client.ts";
import { describeModel, fmt, median, round, table, withCluster, WARMUP_ROUNDS, type BenchContext, type BenchPart } from "./support.ts";

const WORKERS = 2;
const CONCURRENT = 16;
const NEW_TOKENS = 64;
// HTTP against in-process on one cluster: rounds are cheap, so more of them steady the medians.
const HTTP_RUNS = 10;
// Tracing on vs off in one cluster: blocks of rounds per mode, the first rounds of a block untimed.
const BLOCKS = 8;
const SETTLE_ROUNDS = 2;
const BLOCK_ROUNDS = 8;

async function modelLine(): Promise<string> {
  const source = await openModel(BUNDLED_MODEL_DIR);
  const line = describeModel(BUNDLED_MODEL_DIR, source.config);
  await source.close();
  return line;
}

/** The cluster's HTTP API on a free loopback port. */
async function withApi<T>(cluster: LocalCluster, fn: (url: string) => Promise<T>): Promise<T> {
  const app = createHttpApi({ engine: cluster.engine, tokenizer: await loadTokenizer(BUNDLED_MODEL_DIR), modelName: "stories260K", telemetry: cluster.telemetry });
  const server: ServerType = await new Promise((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, () => resolve(s));
  });
  try {
    return await fn(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** CONCURRENT streamed requests of NEW_TOKENS tokens each over HTTP; generated tokens/s. */
async function httpRound(url: string, cluster: LocalCluster): Promise<number> {
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: CONCURRENT }, () => streamCompletion(url, { prompt: [1], max_tokens: NEW_TOKENS, temperature: 0, ignore_eos: true })),
  );
  const seconds = (performance.now() - started) / 1000;
  const bad = results.find((r) => !r.ok || r.completionTokens !== NEW_TOKENS);
  if (bad) throw new Error(`a streamed request failed: status ${bad.status}, ${bad.completionTokens} tokens, ${bad.error ?? ""}`);
  await cluster.waitForBlocksFreed();
  return (CONCURRENT * NEW_TOKENS) / seconds;
}

/** How far apart the last HTTP round's requests reached the engine (from the coordinator's request records). */
function arrivalSpreadMs(cluster: LocalCluster): number {
  const starts = cluster.telemetry.log.recentRequests(CONCURRENT).map((r) => r.startUnixMs);
  return Math.max(...starts) - Math.min(...starts);
}

/**
 * The same load through engine.generate in this process, no HTTP; generated tokens/s. With
 * `spreadMs`, the requests arrive evenly over that time instead of all at once.
 */
async function inProcessRound(cluster: LocalCluster, spreadMs = 0): Promise<number> {
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: CONCURRENT }, async (_, i) => {
      if (spreadMs > 0) await new Promise((r) => setTimeout(r, (i * spreadMs) / (CONCURRENT - 1)));
      return cluster.engine.generate({ promptIds: [1], maxTokens: NEW_TOKENS, sampling: GREEDY, stopTokenIds: [] });
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  if (results.some((r) => r.tokenIds.length !== NEW_TOKENS)) throw new Error("a request ended early");
  await cluster.waitForBlocksFreed();
  return (CONCURRENT * NEW_TOKENS) / seconds;
}

/**
 * The two measurements HTTP_RUNS times each after WARMUP_ROUNDS warm-ups each, in ABBA order (a b,
 * b a, a b, …): drift and whatever favours the first or second of a pair hit both alike.
 */
async function sideBySide(a: () => Promise<number>, b: () => Promise<number>): Promise<{ a: number; b: number; aSamples: number[]; bSamples: number[] }> {
  for (let i = 0; i < WARMUP_ROUNDS; i++) {
    await a();
    await b();
  }
  const aSamples: number[] = [];
  const bSamples: number[] = [];
  for (let i = 0; i < HTTP_RUNS; i++) {
    if (i % 2 === 0) {
      aSamples.push(await a());
      bSamples.push(await b());
    } else {
      bSamples.push(await b());
      aSamples.push(await a());
    }
  }
  return { a: median(aSamples), b: median(bSamples), aSamples, bSamples };
}

const loadLine = `${CONCURRENT} concurrent requests, BOS prompt, ${NEW_TOKENS} new tokens each (ignore_eos), greedy; ${WORKERS} worker processes, 1 onnxruntime thread each`;

export const httpVsInprocess: BenchPart = {
  name: "http-api",
  description: `API overhead: HTTP streaming (SSE) vs in-process engine.generate at ${CONCURRENT} concurrent requests`,
  async run(ctx: BenchContext) {
    ctx.print(await modelLine());
    ctx.print(loadLine);
    ctx.print(`median of ${HTTP_RUNS} alternating runs after ${WARMUP_ROUNDS} warm-up rounds each`);
    ctx.print("HTTP: POST /v1/completions stream=true from a raw-socket HTTP/1.1 client in the coordinator's process (loadtest/client.ts), each SSE chunk parsed; tok/s = tokens / wall time");
    const figures: Record<string, number> = {};
    await withCluster(ctx, { modelDir: BUNDLED_MODEL_DIR, workers: WORKERS }, (cluster) =>
      withApi(cluster, async (url) => {
        const spreads: number[] = [];
        const r = await sideBySide(
          async () => {
            const rate = await httpRound(url, cluster);
            spreads.push(arrivalSpreadMs(cluster));
            return rate;
          },
          () => inProcessRound(cluster),
        );
        // Requests over HTTP reach the engine one after another, not in one instant; the same
        // arrival spread in-process separates the API's own cost from the scheduler's response to it.
        const spreadMs = median(spreads);
        const staggered = await sideBySide(
          () => inProcessRound(cluster, spreadMs),
          () => inProcessRound(cluster),
        );
        figures.http_stream_16_tok_s = r.a;
        figures.inprocess_16_tok_s = r.b;
        figures.inprocess_spread_16_tok_s = staggered.a;
        figures.http_arrival_spread_ms = spreadMs;
        figures.http_vs_inprocess = r.a / r.b;
        figures.http_vs_inprocess_same_arrivals = r.a / staggered.a;
        for (const line of table([
          ["path", "tok/s (median)", "runs"],
          ["HTTP streaming", fmt(r.a), r.aSamples.map(fmt).join(" ")],
          ["in-process, all 16 at once", fmt(r.b), r.bSamples.map(fmt).join(" ")],
          [`in-process, arrivals spread over ${fmt(spreadMs)} ms as over HTTP`, fmt(staggered.a), staggered.aSamples.map(fmt).join(" ")],
          ["http_vs_inprocess (goal >= 0.9)", `${fmt(figures.http_vs_inprocess)}x`, ""],
          ["http_vs_inprocess_same_arrivals", `${fmt(figures.http_vs_inprocess_same_arrivals)}x`, ""],
        ])) ctx.print(line);
      }),
    );
    return Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, round(v)]));
  },
};

const OTLP_SINK = fileURLToPath(new URL("./otlp-sink.ts", import.meta.url));

/**
 * An OTLP/HTTP endpoint that reads and acknowledges every export (a collector's own cost is left
 * out), in a process of its own as a collector would be: in the coordinator's process its socket
 * reads took ~3-5 us per generated token of the coordinator's event loop.
 */
async function startOtlpSink(): Promise<{ url: string; stats(): Promise<{ exports: number; bytes: number }>; close(): Promise<void> }> {
  const child = fork(OTLP_SINK, [], { execArgv: ["--import", "tsx"], stdio: ["ignore", "pipe", "inherit", "ipc"] });
  const url = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once("line", (line) => resolve((JSON.parse(line) as { url: string }).url));
    child.once("exit", (code) => reject(new Error(`the OTLP sink exited with code ${code}`)));
  });
  return {
    url,
    stats: () =>
      new Promise((resolve) => {
        child.once("message", (m) => resolve(m as { exports: number; bytes: number }));
        child.send("stats");
      }),
    close: async () => {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.disconnect();
      await exited;
    },
  };
}

export const tracingOnVsOff: BenchPart = {
  name: "tracing",
  description: `throughput with tracing exporting over OTLP to a local receiver vs off, ${CONCURRENT} concurrent HTTP streams`,
  async run(ctx: BenchContext) {
    ctx.print(await modelLine());
    ctx.print(loadLine);
    const sink = await startOtlpSink();
    const figures: Record<string, number> = {};
    try {
      // Same cluster, alternating blocks of rounds: every request traced (request, step and stage
      // spans, exported) vs none (head sampling ratio 0: no span is made anywhere, as with tracing
      // off). Spans leave up to ~350 ms after their step (batching, then the export delay), so the
      // first rounds of each block, which still carry the previous block's exports, are not timed.
      // Two clusters differ by more than tracing costs on this machine (two identical untraced
      // clusters side by side measured 9% apart), so this is the figure; the one-cluster-each
      // comparison follows for reference.
      ctx.print(
        `same cluster, blocks of ${SETTLE_ROUNDS} untimed + ${BLOCK_ROUNDS} timed rounds, ${BLOCKS} of each mode in ABBA order: sample ratio 1 ` +
          `(every span exported, OTLP/HTTP protobuf) vs 0 (no span made), after ${WARMUP_ROUNDS} warm-up rounds each; then the same with both modes at ratio 0 (an A/A control)`,
      );
      const on: number[] = [];
      const off: number[] = [];
      const controlA: number[] = [];
      const controlB: number[] = [];
      await withCluster(ctx, { modelDir: BUNDLED_MODEL_DIR, workers: WORKERS, tracesUrl: sink.url }, (cluster) =>
        withApi(cluster, async (url) => {
          const block = async (ratio: number, rounds: number, into?: number[]) => {
            cluster.telemetry.sampleRatio = ratio;
            for (let i = 0; i < SETTLE_ROUNDS; i++) await httpRound(url, cluster);
            for (let i = 0; i < rounds; i++) {
              const rate = await httpRound(url, cluster);
              into?.push(rate);
            }
          };
          await block(1, WARMUP_ROUNDS);
          await block(0, WARMUP_ROUNDS);
          // ABBA: whichever mode goes first in a pair of blocks runs slower here (an A/A run of
          // plain alternation measured 0.95-0.96), and drift favours one side; counterbalanced
          // order cancels both, and the control below shows what is left.
          const abba = async (a: () => Promise<void>, b: () => Promise<void>) => {
            for (let i = 0; i < BLOCKS; i++) {
              if (i % 2 === 0) {
                await a();
                await b();
              } else {
                await b();
                await a();
              }
            }
          };
          await abba(
            () => block(1, BLOCK_ROUNDS, on),
            () => block(0, BLOCK_ROUNDS, off),
          );
          await abba(
            () => block(0, BLOCK_ROUNDS, controlA),
            () => block(0, BLOCK_ROUNDS, controlB),
          );
        }),
      );
      figures.tracing_on_16_tok_s = median(on);
      figures.tracing_off_16_tok_s = median(off);
      figures.tracing_on_vs_off = figures.tracing_on_16_tok_s / figures.tracing_off_16_tok_s;
      figures.tracing_aa_control = median(controlA) / median(controlB);
      for (const line of table([
        ["tracing (same cluster)", "tok/s (median)", "runs"],
        ["on (every span exported)", fmt(figures.tracing_on_16_tok_s), on.map(fmt).join(" ")],
        ["off (no span made)", fmt(figures.tracing_off_16_tok_s), off.map(fmt).join(" ")],
        ["tracing_on_vs_off (goal >= 0.95)", `${fmt(figures.tracing_on_vs_off)}x`, ""],
        ["A/A control: off vs off, same order", `${fmt(figures.tracing_aa_control)}x`, `${controlA.map(fmt).join(" ")} / ${controlB.map(fmt).join(" ")}`],
      ])) ctx.print(line);

      const { exports, bytes } = await sink.stats();
      ctx.print(`  the receiver (a process of its own) took ${exports} OTLP exports, ${fmt(bytes / 1024)} KiB`);
    } finally {
      await sink.close();
    }
    return Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, round(v)]));
  },
};
