import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { BUNDLED_MODEL_DIR, openModel } from "@strata/model";
import { GREEDY, SeededRandom, type SamplingParams } from "@strata/sampling";
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

const PIPELINING_PAIRS = 2;
const SHORT_CONTEXT_PAIRS = 2;
const SAMPLED: SamplingParams = { temperature: 0.8, topP: 0.95, topK: 0 };
const COMPUTE_LOOP = fileURLToPath(new URL("./compute-loop.ts", import.meta.url));

/**
 * The load pipelining is measured at: 32 concurrent chat requests behind one shared system prompt
 * (the prefix cache holds it after the first), each with its own user turn. Beside it, the same
 * comparison at 16-token prompts, where a step's weights, read once per micro-batch, outweigh the
 * sequences' own work.
 */
interface PipeliningLoad {
  label: string;
  systemTokens: number;
  userTokens: number;
  newTokens: number;
  /** Context a sequence attends over halfway through its output: what the partition is planned for and the ceiling measured at. */
  midContext: number;
  /** Untimed rounds per cluster: a round of 128-token replies warms as many steps as four of 32. */
  warmups: number;
}
const CHAT_LOAD: PipeliningLoad = { label: "chat", systemTokens: SYSTEM_PROMPT_TOKENS, userTokens: 16, newTokens: NEW_TOKENS, midContext: SYSTEM_PROMPT_TOKENS + 16 + NEW_TOKENS / 2, warmups: WARMUP_ROUNDS };
/**
 * The chat load with 128-token replies: decoding outweighs the user turns' prefill, which fills
 * and drains the pipeline once per burst (~25% of a pipelined 32-token burst, gaining ~1.2x from
 * pipelining). It measured about the chat load's ratio (1.41-1.44 against 1.39-1.42, three runs):
 * stage 1's decode step, beside stage 0's, sets the pace either way.
 */
const LONG_REPLIES_LOAD: PipeliningLoad = { ...CHAT_LOAD, label: "chat, 128-token replies", newTokens: 4 * NEW_TOKENS, midContext: SYSTEM_PROMPT_TOKENS + 16 + 2 * NEW_TOKENS, warmups: 1 };
const LONG_REPLIES_PAIRS = 2;
const SHORT_LOAD: PipeliningLoad = { label: "short context", systemTokens: 0, userTokens: PROMPT_TOKENS, newTokens: NEW_TOKENS, midContext: PROMPT_TOKENS + NEW_TOKENS / 2, warmups: WARMUP_ROUNDS };

/** Decode steps/s of one compute-loop process over `layers` layers at batch `batch`, `past` tokens in (the first `shared` in shared blocks), for `seconds`. */
async function computeLoop(dir: string, layers: number, batch: number, past: number, shared: number, seconds: number): Promise<number> {
  const args = [COMPUTE_LOOP, dir, String(layers), String(batch), String(past), String(seconds), String(shared)];
  const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", ...args], { encoding: "utf8" });
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
async function pipeliningCeiling(dir: string, layers: number, batch: number, past: number, shared: number): Promise<PipeliningCeiling> {
  const wholeBatchAlone = await computeLoop(dir, layers, batch, past, shared, 4);
  const halfBatchAlone = await computeLoop(dir, layers, batch / 2, past, shared, 4);
  const [a, b] = await Promise.all([computeLoop(dir, layers, batch / 2, past, shared, 4), computeLoop(dir, layers, batch / 2, past, shared, 4)]);
  const halfBatchBesideAnother = Math.min(a, b);
  return { wholeBatchAlone, halfBatchAlone, halfBatchBesideAnother, twoProcesses: (a + b) / halfBatchAlone, sameLoad: halfBatchBesideAnother / wholeBatchAlone };
}

interface PipeliningResult {
  on: number[];
  off: number[];
  ratio: number;
  ceiling?: PipeliningCeiling;
  partition: string;
}

/** Pipelining off and on clusters, alternating `pairs` times (one cluster at a time), both planned for the load; then, if asked, the ceiling. */
async function comparePipelining(ctx: BenchContext, dir: string, load: PipeliningLoad, pairs: number, withCeiling = true): Promise<PipeliningResult> {
  const vocab = BENCH_SHAPE.vocabSize;
  const system = load.systemTokens > 0 ? randomPrompt(new SeededRandom(7), load.systemTokens, vocab) : [];
  const prompt = (rng: SeededRandom) => (system.length ? [...system, ...randomPrompt(rng, load.userTokens + 1, vocab).slice(1)] : randomPrompt(rng, load.userTokens, vocab));
  const opts = { modelDir: dir, workers: 2, planLoad: { batch: CONCURRENT / 2, contextTokens: load.midContext } };
  const off: number[] = [];
  const on: number[] = [];
  let partition = "";
  // One request prefills the system prompt first: requests arriving together all miss the prefix cache.
  const primed = async (cluster: LocalCluster) => {
    if (system.length) await cluster.engine.generate({ promptIds: system, maxTokens: 1, sampling: GREEDY, stopTokenIds: [] });
    return throughputSamples(cluster, CONCURRENT, prompt, load.newTokens, 2, load.warmups);
  };
  for (let pair = 0; pair < pairs; pair++) {
    await withCluster(ctx, { ...opts, pipelining: false }, async (cluster) => {
      off.push(...(await primed(cluster)));
    });
    await withCluster(ctx, opts, async (cluster) => {
      partition = describePartition(cluster.partition);
      on.push(...(await primed(cluster)));
    });
  }
  const ceiling = withCeiling ? await pipeliningCeiling(dir, BENCH_SHAPE.numLayers / 2, CONCURRENT, load.midContext, load.systemTokens) : undefined;
  return { on, off, ratio: median(on) / median(off), ceiling, partition };
}

/**
 * Aggregate generated tokens/s of `count` concurrent requests, one sample per run after `warmups`
 * untimed runs. A fresh chat-load cluster's runs measured 280, 332, 312 and, the fourth cluster in
 * one process, 340, 397, 410 tok/s: one warm-up left the first timed run short of a running server's.
 */
async function throughputSamples(cluster: LocalCluster, count: number, prompt: (rng: SeededRandom) => number[], newTokens: number, runs = 2, warmups = WARMUP_ROUNDS, sampling: SamplingParams = GREEDY): Promise<number[]> {
  const rng = new SeededRandom(3);
  const once = async () => {
    const prompts = Array.from({ length: count }, () => prompt(rng));
    const started = performance.now();
    const results = await Promise.all(prompts.map((promptIds) => cluster.engine.generate({ promptIds, maxTokens: newTokens, sampling, seed: 1, stopTokenIds: [] })));
    const seconds = (performance.now() - started) / 1000;
    await cluster.waitForBlocksFreed();
    return results.reduce((a, r) => a + r.tokenIds.length, 0) / seconds;
  };
  for (let i = 0; i < warmups; i++) await once();
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) samples.push(await once());
  return samples;
}

async function throughput(cluster: LocalCluster, count: number, prompt: (rng: SeededRandom) => number[], newTokens: number, runs = 2, warmups = WARMUP_ROUNDS): Promise<number> {
  return median(await throughputSamples(cluster, count, prompt, newTokens, runs, warmups));
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
    const shortPrompt = (rng: SeededRandom) => randomPrompt(rng, PROMPT_TOKENS, vocab);
    ctx.print(describeShape(BENCH_SHAPE));
    ctx.print(
      `2 worker processes, 1 onnxruntime thread each; ${CONCURRENT} concurrent requests, ${NEW_TOKENS} new tokens each unless said, greedy, 2 runs after ${WARMUP_ROUNDS} warm-up runs per cluster (1 at 128-token replies). ` +
        `Loads: chat = a shared ${CHAT_LOAD.systemTokens}-token system prompt (prefix-cached after the warm-up) + a ${CHAT_LOAD.userTokens}-token user turn; ` +
        `short context = ${PROMPT_TOKENS}-token random prompts. Pipelining off and on clusters alternate (one cluster at a time), ` +
        `${PIPELINING_PAIRS} pairs at the chat load, ${LONG_REPLIES_PAIRS} with 128-token replies, ${SHORT_CONTEXT_PAIRS} at short context; each cluster's partition planned for its load ` +
        `(micro-batches of ${CONCURRENT / 2}, the context halfway through the output); medians of all runs`,
    );

    const figures: Record<string, number> = {};
    const chat = await comparePipelining(ctx, dir, CHAT_LOAD, PIPELINING_PAIRS);
    const longReplies = await comparePipelining(ctx, dir, LONG_REPLIES_LOAD, LONG_REPLIES_PAIRS, false);
    const short = await comparePipelining(ctx, dir, SHORT_LOAD, SHORT_CONTEXT_PAIRS);
    figures.pipelining_on_vs_off = chat.ratio;
    figures.pipelining_on_32_chat_tok_s = median(chat.on);
    figures.pipelining_off_32_chat_tok_s = median(chat.off);
    figures.pipelining_ceiling_same_load = chat.ceiling!.sameLoad;
    figures.two_process_parallelism = chat.ceiling!.twoProcesses;
    figures.pipelining_on_vs_off_long_replies = longReplies.ratio;
    figures.pipelining_on_long_replies_tok_s = median(longReplies.on);
    figures.pipelining_off_long_replies_tok_s = median(longReplies.off);
    // What reading the shared system prompt once per step (split attention's shared past) gains:
    // the chat load's half-step at half the batch with that prompt in shared blocks, over the
    // same with every sequence's past in blocks of its own.
    const halfStep = (shared: number) => computeLoop(dir, BENCH_SHAPE.numLayers / 2, CONCURRENT / 2, CHAT_LOAD.midContext, shared, 4);
    figures.shared_past_step_speedup = (await halfStep(CHAT_LOAD.systemTokens)) / (await halfStep(0));
    figures.pipelining_on_vs_off_short_context = short.ratio;
    figures.pipelining_ceiling_short_context = short.ceiling!.sameLoad;
    figures.concurrent_32_tok_s = median(short.on);
    figures.pipelining_off_32_tok_s = median(short.off);
    await withCluster(ctx, { modelDir: dir, workers: 2, planLoad: { batch: CONCURRENT / 2, contextTokens: SHORT_LOAD.midContext } }, async (cluster) => {
      figures.single_request_tok_s = await throughput(cluster, 1, shortPrompt, NEW_TOKENS);
      // What sampling costs beside greedy decoding, same cluster and load: the last stage draws
      // every token of a 32,000-word vocabulary's distribution.
      figures.greedy_32_tok_s_same_cluster = median(await throughputSamples(cluster, CONCURRENT, shortPrompt, NEW_TOKENS, 2, 2));
      figures.sampled_32_tok_s = median(await throughputSamples(cluster, CONCURRENT, shortPrompt, NEW_TOKENS, 2, 2, SAMPLED));
      figures.sampled_vs_greedy = figures.sampled_32_tok_s / figures.greedy_32_tok_s_same_cluster;

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
    figures.prefix_ttft_hit_vs_miss = figures.prefix_ttft_miss_ms / figures.prefix_ttft_hit_ms;

    const ceilingRows = ({ label, midContext, systemTokens }: PipeliningLoad, c: PipeliningCeiling) => [
      [`${label}: ${BENCH_SHAPE.numLayers / 2}-layer half-steps/s at ${midContext} tokens in${systemTokens ? ` (${systemTokens} shared)` : ""}: batch ${CONCURRENT} alone / batch ${CONCURRENT / 2} alone / batch ${CONCURRENT / 2} beside another`, "steps/s", `${fmt(c.wholeBatchAlone)} / ${fmt(c.halfBatchAlone)} / ${fmt(c.halfBatchBesideAnother)}`],
      [`${label}: 2 processes at batch ${CONCURRENT / 2} at once vs 1`, "ratio", `${fmt(c.twoProcesses)}x`],
      [`${label}: most pipelining can gain here at this load`, "ratio", `${fmt(c.sameLoad)}x`],
    ];
    for (const line of table([
      ["load", "figure", "value"],
      [`${CHAT_LOAD.label}, pipelining on (2 micro-batches in flight), ${chat.partition}`, "tok/s", `${fmt(median(chat.on))}  (${chat.on.map(fmt).join(" ")})`],
      [`chat, pipelining off (1 in flight)`, "tok/s", `${fmt(median(chat.off))}  (${chat.off.map(fmt).join(" ")})`],
      ["pipelining_on_vs_off (chat; goal >= 1.6)", "ratio", `${fmt(chat.ratio)}x`],
      ...ceilingRows(CHAT_LOAD, chat.ceiling!),
      [`${LONG_REPLIES_LOAD.label}, pipelining on, ${longReplies.partition}`, "tok/s", `${fmt(median(longReplies.on))}  (${longReplies.on.map(fmt).join(" ")})`],
      [`${LONG_REPLIES_LOAD.label}, pipelining off`, "tok/s", `${fmt(median(longReplies.off))}  (${longReplies.off.map(fmt).join(" ")})`],
      ["pipelining_on_vs_off_long_replies", "ratio", `${fmt(longReplies.ratio)}x`],
      [`chat: ${BENCH_SHAPE.numLayers / 2}-layer half-step at batch ${CONCURRENT / 2}, system prompt read once for the batch vs once per sequence`, "ratio", `${fmt(figures.shared_past_step_speedup)}x`],
      [`short context, pipelining on, ${short.partition}`, "tok/s", `${fmt(median(short.on))}  (${short.on.map(fmt).join(" ")})`],
      [`short context, pipelining off`, "tok/s", `${fmt(median(short.off))}  (${short.off.map(fmt).join(" ")})`],
      ["pipelining_on_vs_off_short_context", "ratio", `${fmt(short.ratio)}x`],
      ...ceilingRows(SHORT_LOAD, short.ceiling!),
      ["short context, 1 request", "tok/s", fmt(figures.single_request_tok_s)],
      ["batch32_vs_1 (short context, pipelining on; goal >= 6)", "ratio", `${fmt(figures.batch32_vs_1)}x`],
      [`short context, 32 requests sampled (temperature ${SAMPLED.temperature}, top_p ${SAMPLED.topP}) / greedy, same cluster`, "tok/s", `${fmt(figures.sampled_32_tok_s)} / ${fmt(figures.greedy_32_tok_s_same_cluster)}`],
      ["sampled_vs_greedy", "ratio", `${fmt(figures.sampled_vs_greedy)}x`],
      [`${SYSTEM_PROMPT_TOKENS}-token system prompt + 15 user tokens, miss`, "TTFT ms", fmt(figures.prefix_ttft_miss_ms)],
      [`${SYSTEM_PROMPT_TOKENS}-token system prompt + 15 user tokens, hit`, "TTFT ms", fmt(figures.prefix_ttft_hit_ms)],
      ["prefix_ttft_hit_vs_miss (goal >= 5)", "ratio", `${fmt(figures.prefix_ttft_hit_vs_miss)}x`],
    ])) ctx.print(line);

    // The bundled model, 32 concurrent 64-token requests over 2 worker processes.
    const source = await openModel(BUNDLED_MODEL_DIR);
    ctx.print(describeModel(BUNDLED_MODEL_DIR, source.config));
    await source.close();
    await withCluster(ctx, { modelDir: BUNDLED_MODEL_DIR, workers: 2 }, async (cluster) => {
      figures.aggregate_32_tok_s = await throughput(cluster, CONCURRENT, () => [1], 64, 5, WARMUP_ROUNDS);
    });
    ctx.print(`  ${CONCURRENT} concurrent requests, BOS prompt, 64 new tokens, 2 worker processes, median of 5 runs after ${WARMUP_ROUNDS} warm-ups: ${fmt(figures.aggregate_32_tok_s)} tok/s aggregate (llama.cpp server, 8 slots: 7,178 tok/s; goal >= 7,200)`);
    return Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, round(v)]));
  },
};
