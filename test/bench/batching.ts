import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { BUNDLED_MODEL_DIR, openModel } from "@strata/model";
import { GREEDY, SeededRandom } from "@strata/sampling";
import type { LocalCluster } from "@strata/coordinator";
import { describeModel, describePartition, fmt, median, round, table, withCluster, WARMUP_ROUNDS, type BenchContext, type BenchPart } from "./support.ts";
import { BENCH_SHAPE, describeShape, syntheticModelDir } from "./synthetic.ts";

const CONCURRENT = 32;
const PROMPT_TOKENS = 16;
const NEW_TOKENS = 32;
const SYSTEM_PROMPT_TOKENS = 1024;

function randomPrompt(rng: SeededRandom, length: number, vocab: number): number[] {
  return [1, ...Array.from({ length: length - 1 }, () => 3 + Math.floor(rng.next() * (vocab - 3)))];
}

const PIPELINING_PAIRS = 3;
const COMPUTE_LOOP = fileURLToPath(new URL("./compute-loop.ts", import.meta.url));

/** Decode steps/s of one compute-loop process over `layers` layers at batch `batch`, for `seconds`. */
async function computeLoop(dir: string, layers: number, batch: number, seconds: number): Promise<number> {
  const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", COMPUTE_LOOP, dir, String(layers), String(batch), String(seconds)], { encoding: "utf8" });
  return (JSON.parse(stdout.trim().split("\n").pop()!) as { steps_per_s: number }).steps_per_s;
}

interface PipeliningCeiling {
  /** Half-steps/s of one process over half the layers at the whole batch, alone. */
  wholeBatchAlone: number;
  /** The same at half the batch, one process alone and the slower of two running at once. */
  halfBatchAlone: number;
  halfBatchBesideAnother: number;
  /** Two processes at half the batch, summed, over one alone: the parallelism the cores give. */
  twoProcesses: number;
  /** What 2-stage pipelining can gain at most at this load (see pipeliningCeiling). */
  sameLoad: number;
}

/**
 * The most 2-stage pipelining can gain on this machine at this load. Off, `batch` decodes go
 * through both halves of the layers in turn as one micro-batch: its rate is set by a half-step at
 * the whole batch. On, two micro-batches of half the batch each, and each stage does two
 * half-steps per cycle while the other stage computes beside it. So on / off is at most a
 * half-batch half-step beside another process over a whole-batch half-step alone. Neither 2
 * processes at once nor half the batch is free here: a half-batch step reads the same weights
 * for half the tokens, and two processes share the memory bus.
 */
async function pipeliningCeiling(dir: string, layers: number, batch: number): Promise<PipeliningCeiling> {
  const wholeBatchAlone = await computeLoop(dir, layers, batch, 4);
  const halfBatchAlone = await computeLoop(dir, layers, batch / 2, 4);
  const [a, b] = await Promise.all([computeLoop(dir, layers, batch / 2, 4), computeLoop(dir, layers, batch / 2, 4)]);
  const halfBatchBesideAnother = Math.min(a, b);
  return { wholeBatchAlone, halfBatchAlone, halfBatchBesideAnother, twoProcesses: (a + b) / halfBatchAlone, sameLoad: halfBatchBesideAnother / wholeBatchAlone };
}

/** Aggregate generated tokens/s of `count` concurrent requests, one sample per run after `warmups` untimed runs. */
async function throughputSamples(cluster: LocalCluster, count: number, promptTokens: number, newTokens: number, vocab: number, runs = 2, warmups = 1): Promise<number[]> {
  const rng = new SeededRandom(3);
  const once = async () => {
    const prompts = Array.from({ length: count }, () => randomPrompt(rng, promptTokens, vocab));
    const started = performance.now();
    const results = await Promise.all(prompts.map((promptIds) => cluster.engine.generate({ promptIds, maxTokens: newTokens, sampling: GREEDY, stopTokenIds: [] })));
    const seconds = (performance.now() - started) / 1000;
    await cluster.waitForBlocksFreed();
    return results.reduce((a, r) => a + r.tokenIds.length, 0) / seconds;
  };
  for (let i = 0; i < warmups; i++) await once();
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) samples.push(await once());
  return samples;
}

async function throughput(cluster: LocalCluster, count: number, promptTokens: number, newTokens: number, vocab: number, runs = 2, warmups = 1): Promise<number> {
  return median(await throughputSamples(cluster, count, promptTokens, newTokens, vocab, runs, warmups));
}

async function timeToFirstToken(cluster: LocalCluster, promptIds: number[], cacheSalt: string): Promise<number> {
  const started = performance.now();
  let first = 0;
  await cluster.engine.generate({ promptIds, maxTokens: 1, sampling: GREEDY, stopTokenIds: [], cacheSalt, onToken: () => (first ||= performance.now()) });
  return first - started;
}

export const batching: BenchPart = {
  name: "batching",
  description: "continuous batching, pipelining and prefix caching on a compute-bound synthetic model over 2 workers; aggregate throughput on the bundled model",
  async run(ctx: BenchContext) {
    const dir = await syntheticModelDir();
    const vocab = BENCH_SHAPE.vocabSize;
    ctx.print(describeShape(BENCH_SHAPE));
    ctx.print(
      `2 worker processes, 1 onnxruntime thread each; requests: ${PROMPT_TOKENS}-token random prompts, ${NEW_TOKENS} new tokens, greedy; ` +
        `2 runs after a warm-up per cluster; pipelining off and on clusters alternate ${PIPELINING_PAIRS} times (one cluster at a time), medians of all their runs`,
    );

    const figures: Record<string, number> = {};
    const off: number[] = [];
    const on: number[] = [];
    for (let pair = 0; pair < PIPELINING_PAIRS; pair++) {
      await withCluster(ctx, { modelDir: dir, workers: 2, pipelining: false }, async (cluster) => {
        off.push(...(await throughputSamples(cluster, CONCURRENT, PROMPT_TOKENS, NEW_TOKENS, vocab)));
      });
      await withCluster(ctx, { modelDir: dir, workers: 2 }, async (cluster) => {
        on.push(...(await throughputSamples(cluster, CONCURRENT, PROMPT_TOKENS, NEW_TOKENS, vocab)));
      });
    }
    figures.pipelining_off_32_tok_s = median(off);
    figures.concurrent_32_tok_s = median(on);
    const halfLayers = BENCH_SHAPE.numLayers / 2;
    const ceiling = await pipeliningCeiling(dir, halfLayers, CONCURRENT);
    figures.pipelining_ceiling_same_load = ceiling.sameLoad;
    figures.two_process_parallelism = ceiling.twoProcesses;
    await withCluster(ctx, { modelDir: dir, workers: 2 }, async (cluster) => {
      ctx.print(`partition (balanced by compute, the LM head counted on the last stage): ${describePartition(cluster.partition)}`);
      figures.single_request_tok_s = await throughput(cluster, 1, PROMPT_TOKENS, NEW_TOKENS, vocab);

      // Time to first token behind a shared 1,024-token system prompt: a fresh salt misses the
      // prefix cache every time; a fixed salt hits it after its first request.
      const rng = new SeededRandom(5);
      const system = randomPrompt(rng, SYSTEM_PROMPT_TOKENS, vocab);
      const withUser = () => [...system, ...randomPrompt(rng, 16, vocab).slice(1)];
      const misses: number[] = [];
      const hits: number[] = [];
      await timeToFirstToken(cluster, withUser(), "warm");
      for (let i = 0; i < 2; i++) {
        misses.push(await timeToFirstToken(cluster, withUser(), `miss-${i}`));
        hits.push(await timeToFirstToken(cluster, withUser(), "warm"));
      }
      figures.prefix_ttft_miss_ms = median(misses);
      figures.prefix_ttft_hit_ms = median(hits);
    });
    figures.batch32_vs_1 = figures.concurrent_32_tok_s / figures.single_request_tok_s;
    figures.pipelining_on_vs_off = figures.concurrent_32_tok_s / figures.pipelining_off_32_tok_s;
    figures.prefix_ttft_hit_vs_miss = figures.prefix_ttft_miss_ms / figures.prefix_ttft_hit_ms;

    for (const line of table([
      ["load", "figure", "value"],
      ["1 request", "tok/s", fmt(figures.single_request_tok_s)],
      [`${CONCURRENT} concurrent, pipelining on (2 micro-batches in flight)`, "tok/s", `${fmt(figures.concurrent_32_tok_s)}  (${on.map(fmt).join(" ")})`],
      [`${CONCURRENT} concurrent, pipelining off (1 in flight)`, "tok/s", `${fmt(figures.pipelining_off_32_tok_s)}  (${off.map(fmt).join(" ")})`],
      [`${SYSTEM_PROMPT_TOKENS}-token system prompt + 15 user tokens, miss`, "TTFT ms", fmt(figures.prefix_ttft_miss_ms)],
      [`${SYSTEM_PROMPT_TOKENS}-token system prompt + 15 user tokens, hit`, "TTFT ms", fmt(figures.prefix_ttft_hit_ms)],
      ["batch32_vs_1 (goal >= 6)", "ratio", `${fmt(figures.batch32_vs_1)}x`],
      ["pipelining_on_vs_off (goal >= 1.6)", "ratio", `${fmt(figures.pipelining_on_vs_off)}x`],
      [`${halfLayers}-layer half-steps/s: batch ${CONCURRENT} alone / batch ${CONCURRENT / 2} alone / batch ${CONCURRENT / 2} beside another`, "steps/s", `${fmt(ceiling.wholeBatchAlone)} / ${fmt(ceiling.halfBatchAlone)} / ${fmt(ceiling.halfBatchBesideAnother)}`],
      [`2 processes at batch ${CONCURRENT / 2} at once vs 1 (two_process_parallelism)`, "ratio", `${fmt(ceiling.twoProcesses)}x`],
      [`pipelining_ceiling_same_load: most pipelining can gain here at this load`, "ratio", `${fmt(ceiling.sameLoad)}x`],
      ["prefix_ttft_hit_vs_miss (goal >= 5)", "ratio", `${fmt(figures.prefix_ttft_hit_vs_miss)}x`],
    ])) ctx.print(line);

    // The bundled model, 32 concurrent 64-token requests over 2 worker processes.
    const source = await openModel(BUNDLED_MODEL_DIR);
    ctx.print(describeModel(BUNDLED_MODEL_DIR, source.config));
    await source.close();
    await withCluster(ctx, { modelDir: BUNDLED_MODEL_DIR, workers: 2 }, async (cluster) => {
      figures.aggregate_32_tok_s = await throughput(cluster, CONCURRENT, 1, 64, 512, 5, WARMUP_ROUNDS);
    });
    ctx.print(`  ${CONCURRENT} concurrent requests, BOS prompt, 64 new tokens, 2 worker processes, median of 5 runs after ${WARMUP_ROUNDS} warm-ups: ${fmt(figures.aggregate_32_tok_s)} tok/s aggregate (llama.cpp server, 8 slots: 7,178 tok/s; goal >= 7,200)`);
    return Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, round(v)]));
  },
};
