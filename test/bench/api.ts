import { fork } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { AddressInfo } from "node:net";
import { performance } from "node:perf_hooks";
import { serve, type ServerType } from "@hono/node-server";
import { createHttpApi, servedModelName, type LocalCluster } from "@strata/coordinator";
import { BUNDLED_MODEL_DIR, loadTokenizer, openModel } from "@strata/model";
import { GREEDY } from "@strata/sampling";
import { streamCompletion } from "../../loadtest/client.ts";
import { describeModel, fmt, median, round, table, withCluster, WARMUP_ROUNDS, type BenchContext, type BenchPart } from "./support.ts";
import { BENCH_SHAPE, describeShape, syntheticModelDir } from "./synthetic.ts";

const WORKERS = 2;
const CONCURRENT = 16;

/**
 * A model the API figures are measured on, with its share of rounds. The headline figures use the
 * compute-bound synthetic model the scheduler's figures are stated on (steps of milliseconds, as a
 * served model's are); the bundled model's steps take well under a millisecond, so a fixed cost per
 * step or token weighs on it most: its figures follow under keys ending in _stories260k.
 */
interface Subject {
  /** Ends the subject's JSON keys. */
  keySuffix: string;
  modelDir: string;
  modelLine: string;
  newTokens: number;
  /** HTTP vs in-process: measured rounds of each, after WARMUP_ROUNDS each. */
  httpRuns: number;
  /** Also measure in-process arrivals spread as HTTP's were (what part of the gap is arrival order). */
  spreadArrivals: boolean;
  /** Tracing on vs off in one cluster: blocks per mode, the first rounds of a block untimed. */
  blocks: number;
  settleRounds: number;
  blockRounds: number;
  /** Then both modes untraced, the same way: what the method itself makes of two equal sides. */
  aaControl: boolean;
}

async function subjects(): Promise<Subject[]> {
  const synthetic = await syntheticModelDir();
  const bundled = await openModel(BUNDLED_MODEL_DIR);
  const bundledLine = describeModel(BUNDLED_MODEL_DIR, bundled.config);
  await bundled.close();
  return [
    // Rounds of ~0.5 s here, within ~+-10% of each other.
    { keySuffix: "", modelDir: synthetic, modelLine: describeShape(BENCH_SHAPE), newTokens: 32, httpRuns: 10, spreadArrivals: false, blocks: 3, settleRounds: 1, blockRounds: 4, aaControl: false },
    // Rounds of ~50 ms here, each swayed by when its last decode run ends (+-40%): many more.
    { keySuffix: "_stories260k", modelDir: BUNDLED_MODEL_DIR, modelLine: bundledLine, newTokens: 64, httpRuns: 10, spreadArrivals: true, blocks: 4, settleRounds: 2, blockRounds: 8, aaControl: true },
  ];
}

/** The cluster's HTTP API on a free loopback port. */
async function withApi<T>(cluster: LocalCluster, modelDir: string, fn: (url: string) => Promise<T>): Promise<T> {
  const app = createHttpApi({ engine: cluster.engine, tokenizer: await loadTokenizer(modelDir), modelName: servedModelName(modelDir), telemetry: cluster.telemetry });
  const server: ServerType = await new Promise((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, () => resolve(s));
  });
  try {
    return await fn(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** CONCURRENT streamed requests of `newTokens` tokens each over HTTP; generated tokens/s. */
async function httpRound(url: string, cluster: LocalCluster, newTokens: number): Promise<number> {
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: CONCURRENT }, () => streamCompletion(url, { prompt: [1], max_tokens: newTokens, temperature: 0, ignore_eos: true })),
  );
  const seconds = (performance.now() - started) / 1000;
  const bad = results.find((r) => !r.ok || r.completionTokens !== newTokens);
  if (bad) throw new Error(`a streamed request failed: status ${bad.status}, ${bad.completionTokens} tokens, ${bad.error ?? ""}`);
  await cluster.waitForBlocksFreed();
  return (CONCURRENT * newTokens) / seconds;
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
async function inProcessRound(cluster: LocalCluster, newTokens: number, spreadMs = 0): Promise<number> {
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: CONCURRENT }, async (_, i) => {
      if (spreadMs > 0) await new Promise((r) => setTimeout(r, (i * spreadMs) / (CONCURRENT - 1)));
      return cluster.engine.generate({ promptIds: [1], maxTokens: newTokens, sampling: GREEDY, stopTokenIds: [] });
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  if (results.some((r) => r.tokenIds.length !== newTokens)) throw new Error("a request ended early");
  await cluster.waitForBlocksFreed();
  return (CONCURRENT * newTokens) / seconds;
}

/**
 * The two measurements `runs` times each after WARMUP_ROUNDS warm-ups each, in ABBA order (a b,
 * b a, a b, …): drift and whatever favours the first or second of a pair hit both alike.
 */
async function sideBySide(runs: number, a: () => Promise<number>, b: () => Promise<number>): Promise<{ a: number; b: number; aSamples: number[]; bSamples: number[] }> {
  for (let i = 0; i < WARMUP_ROUNDS; i++) {
    await a();
    await b();
  }
  const aSamples: number[] = [];
  const bSamples: number[] = [];
  for (let i = 0; i < runs; i++) {
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

const loadLine = (newTokens: number) =>
  `${CONCURRENT} concurrent requests, BOS prompt, ${newTokens} new tokens each (ignore_eos), greedy; ${WORKERS} worker processes, 1 onnxruntime thread each`;

/** Subject `s`'s figures under its keys. */
function keyed(s: Subject, figures: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(figures).map(([k, v]) => [`${k}${s.keySuffix}`, round(v)]));
}

export const httpVsInprocess: BenchPart = {
  name: "http-api",
  description: `API overhead: HTTP streaming (SSE) vs in-process engine.generate at ${CONCURRENT} concurrent requests`,
  async run(ctx: BenchContext) {
    ctx.print("HTTP: POST /v1/completions stream=true from a raw-socket HTTP/1.1 client in the coordinator's process (loadtest/client.ts), each SSE chunk parsed; tok/s = tokens / wall time");
    const figures: Record<string, number> = {};
    for (const subject of await subjects()) Object.assign(figures, await httpVsInprocessOn(ctx, subject));
    return figures;
  },
};

async function httpVsInprocessOn(ctx: BenchContext, subject: Subject): Promise<Record<string, number>> {
  const { newTokens } = subject;
  ctx.print(subject.modelLine);
  ctx.print(`${loadLine(newTokens)}; median of ${subject.httpRuns} runs of each in ABBA order after ${WARMUP_ROUNDS} warm-up rounds each`);
  const figures: Record<string, number> = {};
  const rows = [["path", "tok/s (median)", "runs"]];
  await withCluster(ctx, { modelDir: subject.modelDir, workers: WORKERS }, (cluster) =>
    withApi(cluster, subject.modelDir, async (url) => {
      const spreads: number[] = [];
      const r = await sideBySide(
        subject.httpRuns,
        async () => {
          const rate = await httpRound(url, cluster, newTokens);
          spreads.push(arrivalSpreadMs(cluster));
          return rate;
        },
        () => inProcessRound(cluster, newTokens),
      );
      figures.http_stream_16_tok_s = r.a;
      figures.inprocess_16_tok_s = r.b;
      figures.http_vs_inprocess = r.a / r.b;
      rows.push(["HTTP streaming", fmt(r.a), r.aSamples.map(fmt).join(" ")], ["in-process, all 16 at once", fmt(r.b), r.bSamples.map(fmt).join(" ")]);
      if (subject.spreadArrivals) {
        // Requests over HTTP reach the engine one after another, not in one instant; the same
        // arrival spread in-process separates the API's own cost from the scheduler's response to it.
        const spreadMs = median(spreads);
        const staggered = await sideBySide(
          subject.httpRuns,
          () => inProcessRound(cluster, newTokens, spreadMs),
          () => inProcessRound(cluster, newTokens),
        );
        figures.inprocess_spread_16_tok_s = staggered.a;
        figures.http_arrival_spread_ms = spreadMs;
        figures.http_vs_inprocess_same_arrivals = r.a / staggered.a;
        rows.push([`in-process, arrivals spread over ${fmt(spreadMs)} ms as over HTTP`, fmt(staggered.a), staggered.aSamples.map(fmt).join(" ")]);
      }
    }),
  );
  rows.push([`http_vs_inprocess${subject.keySuffix} (goal >= 0.9)`, `${fmt(figures.http_vs_inprocess)}x`, ""]);
  if (subject.spreadArrivals) rows.push([`http_vs_inprocess_same_arrivals${subject.keySuffix}`, `${fmt(figures.http_vs_inprocess_same_arrivals)}x`, ""]);
  for (const line of table(rows)) ctx.print(line);
  return keyed(subject, figures);
}

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
    ctx.print(
      "same cluster, alternating blocks of rounds in ABBA order: sample ratio 1 (every request, step and stage span made and exported, OTLP/HTTP protobuf) " +
        "vs 0 (no span made, as with tracing off); the first rounds of each block untimed (they carry the previous block's exports); on the bundled model, then the same with both modes at ratio 0 (an A/A control)",
    );
    const sink = await startOtlpSink();
    const figures: Record<string, number> = {};
    try {
      for (const subject of await subjects()) Object.assign(figures, await tracingOnVsOffOn(ctx, subject, sink.url));
      const { exports, bytes } = await sink.stats();
      ctx.print(`  the receiver (a process of its own) took ${exports} OTLP exports, ${fmt(bytes / 1024)} KiB`);
    } finally {
      await sink.close();
    }
    return figures;
  },
};

async function tracingOnVsOffOn(ctx: BenchContext, subject: Subject, tracesUrl: string): Promise<Record<string, number>> {
  const { newTokens, blocks, settleRounds, blockRounds } = subject;
  ctx.print(subject.modelLine);
  ctx.print(`${loadLine(newTokens)}; blocks of ${settleRounds} untimed + ${blockRounds} timed rounds, ${blocks} of each mode, after ${WARMUP_ROUNDS} warm-up rounds each`);
  const on: number[] = [];
  const off: number[] = [];
  const controlA: number[] = [];
  const controlB: number[] = [];
  await withCluster(ctx, { modelDir: subject.modelDir, workers: WORKERS, tracesUrl }, (cluster) =>
    withApi(cluster, subject.modelDir, async (url) => {
      // Spans leave up to ~350 ms after their step (batching, then the export delay): a block's
      // first rounds still carry the previous block's exports.
      const block = async (ratio: number, rounds: number, into?: number[]) => {
        cluster.telemetry.sampleRatio = ratio;
        for (let i = 0; i < settleRounds; i++) await httpRound(url, cluster, newTokens);
        for (let i = 0; i < rounds; i++) {
          const rate = await httpRound(url, cluster, newTokens);
          into?.push(rate);
        }
      };
      await block(1, WARMUP_ROUNDS);
      await block(0, WARMUP_ROUNDS);
      // ABBA: whichever mode goes first in a pair of blocks runs slower here (an A/A run of
      // plain alternation measured 0.95-0.96), and drift favours one side; counterbalanced
      // order cancels both, and the control shows what is left.
      const abba = async (a: () => Promise<void>, b: () => Promise<void>) => {
        for (let i = 0; i < blocks; i++) {
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
        () => block(1, blockRounds, on),
        () => block(0, blockRounds, off),
      );
      if (subject.aaControl) {
        await abba(
          () => block(0, blockRounds, controlA),
          () => block(0, blockRounds, controlB),
        );
      }
    }),
  );
  const figures: Record<string, number> = {
    tracing_on_16_tok_s: median(on),
    tracing_off_16_tok_s: median(off),
    tracing_on_vs_off: median(on) / median(off),
  };
  const rows = [
    ["tracing (same cluster)", "tok/s (median)", "runs"],
    ["on (every span exported)", fmt(figures.tracing_on_16_tok_s), on.map(fmt).join(" ")],
    ["off (no span made)", fmt(figures.tracing_off_16_tok_s), off.map(fmt).join(" ")],
    [`tracing_on_vs_off${subject.keySuffix} (goal >= 0.95)`, `${fmt(figures.tracing_on_vs_off)}x`, ""],
  ];
  if (subject.aaControl) {
    figures.tracing_aa_control = median(controlA) / median(controlB);
    rows.push([`A/A control: off vs off, same order (tracing_aa_control${subject.keySuffix})`, `${fmt(figures.tracing_aa_control)}x`, `${controlA.map(fmt).join(" ")} / ${controlB.map(fmt).join(" ")}`]);
  }
  for (const line of table(rows)) ctx.print(line);
  return keyed(subject, figures);
}
