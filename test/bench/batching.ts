import { execFile } from "node:child_process";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { BUNDLED_MODEL_DIR, openModel } from "@strata/model";
import { GREEDY, SeededRandom, type SamplingParams } from "@strata/sampling";
import { gcOnComputeThreads, type LocalCluster } from "@strata/coordinator";
import { describeModel, describePartition, fmt, hostStealSeconds, median, round, table, withCluster, WARMUP_ROUNDS, type BenchContext, type BenchPart } from "./support.ts";
import { BENCH_SHAPE, describeShape, syntheticModelDir } from "./synthetic.ts";
import { scrape } from "../support/prometheus.ts";

const CONCURRENT = 32;
const PROMPT_TOKENS = 16;
const NEW_TOKENS = 32;
const SYSTEM_PROMPT_TOKENS = 1024;
const HISTORY_TOKENS = 768;

function randomPrompt(rng: SeededRandom, length: number, vocab: number): number[] {
  return [1, ...Array.from({ length: length - 1 }, () => 3 + Math.floor(rng.next() * (vocab - 3)))];
}

const SAMPLED: SamplingParams = { temperature: 0.8, topP: 0.95, topK: 0 };
const COMPUTE_LOOP = fileURLToPath(new URL("./compute-loop.ts", import.meta.url));
/** How long each compute-loop process steps (after 3 untimed steps): ~60-130 steps of the half-model here. */
const COMPUTE_LOOP_SECONDS = 2;

/**
 * The loads pipelining is measured at, 32 concurrent requests each. How much two micro-batches of
 * 16 gain over one of 32 depends on how much of a step's work is the sequences' own: a step reads
 * the stage's weights (and a shared system prompt's K/V) once per micro-batch, so that part costs
 * twice as much pipelined, while each sequence's own past costs the same either way.
 */
interface PipeliningLoad {
  label: string;
  /** A system prompt every request begins with (prefix-cached after the first). */
  systemTokens: number;
  /** A history of each request's own (its conversation so far), prefix-cached before timing. */
  historyTokens: number;
  userTokens: number;
  newTokens: number;
  /** Context a sequence attends over halfway through its output: what the partition is planned for (and the chat ceiling measured at). */
  midContext: number;
  /** Untimed rounds per cluster, then timed pairs of rounds, one on each cluster (see comparePipelining). */
  warmups: number;
  pairs: number;
  /** Each worker's KV budget, where the default 128 MiB cannot hold the load's cached prefixes. */
  kvCacheBytes?: number;
}
/**
 * The headline load: one 1,024-token system prompt shared by all 32 requests (prefix-cached after
 * the first), then a 16-token user turn each. Split attention reads the shared prompt once per
 * micro-batch, so most of a step is work done once per micro-batch, which pipelining's half-size
 * micro-batches do twice. With 128-token replies it measured about the same ratio (1.41-1.44 at
 * stop 16): the decode lockstep, not the user turns' prefill, holds it there.
 */
const CHAT_LOAD: PipeliningLoad = { label: "chat", systemTokens: SYSTEM_PROMPT_TOKENS, historyTokens: 0, userTokens: 16, newTokens: NEW_TOKENS, midContext: SYSTEM_PROMPT_TOKENS + 16 + NEW_TOKENS / 2, warmups: 3, pairs: 6 };
/**
 * 32 conversations, each with its own 768-token history cached from earlier turns, each sending
 * a 16-token user turn, as in multi-turn chat: most of a step is attention over each sequence's
 * own past, which costs the same in one micro-batch of 32 or two of 16.
 */
const CONVERSATIONS_LOAD: PipeliningLoad = {
  label: "conversations",
  systemTokens: 0,
  historyTokens: HISTORY_TOKENS,
  userTokens: 16,
  newTokens: NEW_TOKENS,
  midContext: HISTORY_TOKENS + 16 + NEW_TOKENS / 2,
  // The first round after the histories plans their new shapes; the second runs as the rest.
  warmups: 1,
  // A cluster's histories take ~15-35 s to prefill, once per cluster; a round takes ~3 s.
  pairs: 3,
  // Stage 0 holds 5 of 8 layers: 32 x 816 tokens x 10 KB = 267 MB of fp32 K/V.
  kvCacheBytes: 512 * 2 ** 20,
};

/**
 * Decode steps/s of one compute-loop process over layers `layers` (the LM head too where they end
 * the model) at batch `batch`, `past` tokens in (the first `shared` in shared blocks), for `seconds`.
 */
async function computeLoop(dir: string, layers: [number, number], batch: number, past: number, shared: number, seconds: number, clusterWorkers: number): Promise<number> {
  const args = [COMPUTE_LOOP, dir, String(layers[0]), String(layers[1]), String(batch), String(past), String(seconds), String(shared)];
  // With the garbage collection a cluster of `clusterWorkers` workers gives its worker processes.
  const gc = gcOnComputeThreads({ workers: clusterWorkers }) ? ["--single-threaded-gc"] : [];
  const { stdout } = await promisify(execFile)(process.execPath, [...gc, "--import", "tsx", ...args], { encoding: "utf8" });
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
async function pipeliningCeiling(dir: string, numLayers: number, batch: number, past: number, shared: number): Promise<PipeliningCeiling> {
  const seconds = COMPUTE_LOOP_SECONDS;
  const layers: [number, number] = [0, numLayers];
  const wholeBatchAlone = await computeLoop(dir, layers, batch, past, shared, seconds, 2);
  const halfBatchAlone = await computeLoop(dir, layers, batch / 2, past, shared, seconds, 2);
  const [a, b] = await Promise.all([computeLoop(dir, layers, batch / 2, past, shared, seconds, 2), computeLoop(dir, layers, batch / 2, past, shared, seconds, 2)]);
  const halfBatchBesideAnother = Math.min(a, b);
  return { wholeBatchAlone, halfBatchAlone, halfBatchBesideAnother, twoProcesses: (a + b) / halfBatchAlone, sameLoad: halfBatchBesideAnother / wholeBatchAlone };
}

/** Each planned stage's decode steps, compute loops outside any cluster (see plannedStagesCeiling). */
interface PlannedStagesCeiling {
  /** Each stage's step at the whole batch alone (off's steps), and at half the batch with every stage computing at once (on's), ms. */
  wholeBatchAloneMs: number[];
  halfBatchTogetherMs: number[];
  /** What 2-stage pipelining can gain at most over these stages (see plannedStagesCeiling). */
  ratio: number;
}

/**
 * The most pipelining can gain over the stages as the cluster planned them, LM head included:
 * off, a token waits for each stage's whole-batch step in turn; on, every stage steps at half the
 * batch beside the others, and the slowest sets the pace. Below the half-model ceiling wherever
 * the layers split unevenly or the head's half-batch GEMM loses more than a layer's: no schedule
 * of these stages on this machine does better.
 */
async function plannedStagesCeiling(dir: string, partition: readonly (readonly [number, number])[], batch: number, past: number, shared: number): Promise<PlannedStagesCeiling> {
  const seconds = COMPUTE_LOOP_SECONDS;
  const ms = (stepsPerS: number) => 1000 / stepsPerS;
  const wholeBatchAloneMs: number[] = [];
  for (const [start, end] of partition) wholeBatchAloneMs.push(ms(await computeLoop(dir, [start, end], batch, past, shared, seconds, partition.length)));
  const halfBatchTogetherMs = (await Promise.all(partition.map(([start, end]) => computeLoop(dir, [start, end], batch / 2, past, shared, seconds, partition.length)))).map(ms);
  const off = wholeBatchAloneMs.reduce((a, b) => a + b, 0) / batch;
  const on = Math.max(...halfBatchTogetherMs) / (batch / 2);
  return { wholeBatchAloneMs, halfBatchTogetherMs, ratio: off / on };
}

/**
 * The stages' compute over a cluster's timed rounds, from each worker's own step timings (its
 * strata_stage_compute_seconds histogram: a step from taking its batch up to sending it on).
 */
interface StageWork {
  /** Seconds the timed rounds took, end to end, and the tokens they generated. */
  wallSeconds: number;
  tokens: number;
  /** Seconds each stage spent computing steps within them. */
  stageSeconds: number[];
  /** Of those, each stage's decode steps (every sequence one position): seconds, steps and positions. */
  decodeSeconds: number[];
  decodeSteps: number[];
  decodeTokens: number[];
  /** CPU seconds the worker processes and this one (the coordinator's) used within them. */
  cpuSeconds: number;
  /** CPU seconds the host's hypervisor took from the machine's cores within them (steal). */
  stealSeconds: number;
}

function addWork(total: StageWork, more: StageWork): void {
  total.wallSeconds += more.wallSeconds;
  total.tokens += more.tokens;
  total.cpuSeconds += more.cpuSeconds;
  total.stealSeconds += more.stealSeconds;
  const add = (into: number[], from: number[]) => from.forEach((v, i) => (into[i] = (into[i] ?? 0) + v));
  add(total.stageSeconds, more.stageSeconds);
  add(total.decodeSeconds, more.decodeSeconds);
  add(total.decodeSteps, more.decodeSteps);
  add(total.decodeTokens, more.decodeTokens);
}

/** The slowest stage's mean decode step over the stages' mean: 1 when the layers split evenly. */
function stageBalance(work: StageWork): number {
  const steps = decodeStepMs(work);
  return Math.max(...steps) / (steps.reduce((a, b) => a + b, 0) / steps.length);
}

/**
 * Each stage's compute in steps that prefill (any sequence computing a prompt chunk) per timed
 * round, milliseconds. A round's prompts go through every layer but the LM head only at their last
 * position, so a partition balanced for decode leaves its layer-heavy stages with most of the
 * prefill, which pipelining then overlaps little.
 */
function prefillMsPerRound(work: StageWork, rounds: number): number[] {
  return prefillSeconds(work).map((s) => (1000 * s) / rounds);
}

/** Each stage's compute in steps that prefill: all its steps' less its decode steps'. */
function prefillSeconds(work: StageWork): number[] {
  return work.stageSeconds.map((s, i) => s - work.decodeSeconds[i]);
}

/**
 * On vs off had the busiest stage never waited: off's stages' compute per token in turn (a token
 * waits for each), over on's busiest stage's compute per token. Prefill included: what a
 * decode-balanced split leaves the layer-heavy stage of every round's prompts bounds the ratio
 * too. The timed ratio falls short of it by the pipeline's fill and drain, hops and waits.
 */
function busiestStageBound(r: { workOn: StageWork; workOff: StageWork }): number {
  const off = computeSeconds(r.workOff) / r.workOff.tokens;
  const on = Math.max(...r.workOn.stageSeconds) / r.workOn.tokens;
  return off / on;
}

/** The busiest stage's share of its compute spent in prefill steps. */
function prefillShareOfBusiestStage(work: StageWork): number {
  const busiest = work.stageSeconds.indexOf(Math.max(...work.stageSeconds));
  return prefillSeconds(work)[busiest] / work.stageSeconds[busiest];
}

/** What a load's on vs off is made of (see PipeliningResult), under keys ending in `suffix`. */
function whereTheRatioComesFrom(r: PipeliningResult, suffix: string): Record<string, number> {
  const figures: Record<string, number> = {
    pipelining_busy_share_on: busyShare(r.workOn),
    pipelining_busy_share_off: busyShare(r.workOff),
    pipelining_compute_per_token_on_vs_off: computePerTokenOnVsOff(r),
    pipelining_cpu_share_on: cpuShare(r.workOn),
    pipelining_cpu_share_off: cpuShare(r.workOff),
    pipelining_on_vs_off_all_cores_busy: r.ratio / cpuShare(r.workOn),
    pipelining_decode_pace_on_vs_off: decodePaceOnVsOff(r),
    pipelining_stage_balance_on: stageBalance(r.workOn),
    pipelining_prefill_share_on: prefillShareOfBusiestStage(r.workOn),
    pipelining_busiest_stage_bound: busiestStageBound(r),
    pipelining_ttft_mean_ms_on: median(r.firstTokenMsOn),
    pipelining_ttft_mean_ms_off: median(r.firstTokenMsOff),
    pipelining_host_steal_share_on: stealShare(r.workOn),
    pipelining_host_steal_share_off: stealShare(r.workOff),
  };
  return Object.fromEntries(Object.entries(figures).map(([key, value]) => [`${key}${suffix}`, value]));
}

/** Each stage's mean decode step, milliseconds. */
function decodeStepMs(work: StageWork): number[] {
  return work.decodeSeconds.map((s, i) => (1000 * s) / work.decodeSteps[i]);
}

/**
 * On vs off in decode steps alone, at the stages' own step times: off, each generated token
 * waits for every stage's step in turn; on, the stages step side by side, so the slowest one sets
 * the pace. What the ratio would be with no prompts to prefill, no pipeline to fill or drain and
 * no hops between steps; below 2 by what half-size micro-batches cost per token and by how
 * unevenly the layers split.
 */
function decodePaceOnVsOff(r: { workOn: StageWork; workOff: StageWork }): number {
  const perToken = (w: StageWork, i: number) => w.decodeSeconds[i] / w.decodeTokens[i];
  const off = r.workOff.decodeSeconds.reduce((sum, _, i) => sum + perToken(r.workOff, i), 0);
  const on = Math.max(...r.workOn.decodeSeconds.map((_, i) => perToken(r.workOn, i)));
  return off / on;
}

function computeSeconds(work: StageWork): number {
  return work.stageSeconds.reduce((a, b) => a + b, 0);
}

/** Stage compute per generated token, pipelining on over off. */
function computePerTokenOnVsOff(r: { workOn: StageWork; workOff: StageWork }): number {
  return computeSeconds(r.workOn) / r.workOn.tokens / (computeSeconds(r.workOff) / r.workOff.tokens);
}

/** Share of the stages' time spent computing: 1 when every stage computes all the time. */
function busyShare(work: StageWork): number {
  return computeSeconds(work) / (work.stageSeconds.length * work.wallSeconds);
}

/**
 * Share of the machine's cores the cluster kept busy: its processes' CPU time over the cores'
 * time. Pipelining on cannot gain more than its cores left idle: at the same CPU per token, all
 * of them busy would give on's tok/s over this share.
 */
function cpuShare(work: StageWork): number {
  return work.cpuSeconds / (availableParallelism() * work.wallSeconds);
}

/** Share of the cores' time the host's hypervisor took (steal): 0 on a machine of its own. */
function stealShare(work: StageWork): number {
  return work.stealSeconds / (availableParallelism() * work.wallSeconds);
}

interface ClusterSeconds {
  stages: number[];
  decodeSeconds: number[];
  decodeSteps: number[];
  decodeTokens: number[];
  cpu: number;
  steal: number;
}

/** Each stage's compute seconds so far (all steps, and its decode steps'), and the CPU seconds of the worker processes and this one. */
async function clusterSeconds(cluster: LocalCluster): Promise<ClusterSeconds> {
  const scrapes = await Promise.all(cluster.workerMetricsUrls.map(scrape));
  const own = process.cpuUsage();
  const decode = { phase: "decode" };
  return {
    stages: scrapes.map((s) => s.value("strata_stage_compute_seconds_sum")),
    decodeSeconds: scrapes.map((s) => s.value("strata_stage_compute_seconds_sum", decode)),
    decodeSteps: scrapes.map((s) => s.value("strata_stage_compute_seconds_count", decode)),
    decodeTokens: scrapes.map((s) => s.value("strata_stage_tokens_total", decode)),
    cpu: scrapes.reduce((sum, s) => sum + s.value("strata_process_cpu_seconds_total"), (own.user + own.system) / 1e6),
    steal: hostStealSeconds(),
  };
}

interface PipeliningResult {
  /** Each timed round's tok/s, in the order they ran: on[i] and off[i] are one pair. */
  on: number[];
  off: number[];
  /** The median over pairs of each pair's on / off. */
  ratio: number;
  /** Each timed round's mean time from its start to its requests' first tokens, ms. */
  firstTokenMsOn: number[];
  firstTokenMsOff: number[];
  /**
   * Where the ratio comes from: on / off = (on's busy share / off's) / (on's compute per token /
   * off's), tokens over all timed rounds. Off, each stage computes about half the time; on, the
   * stages compute side by side, and two micro-batches of half the batch take longer than one.
   */
  workOn: StageWork;
  workOff: StageWork;
  /** The on cluster's layer ranges. */
  layers: [number, number][];
}

/**
 * A pipelining-off and a pipelining-on cluster, both planned for the load and both up at once,
 * their timed rounds interleaved in pairs (off then on, then on then off, ...), one cluster
 * computing at a time. This host's speed drifts by 20% and more over tens of seconds (the same
 * decode step took 14 to 37 ms within one round): a pair's two rounds, seconds apart, see the
 * same machine, where clusters run one after the other (as this bench did until stop 21) saw
 * different ones.
 */
async function comparePipelining(ctx: BenchContext, dir: string, load: PipeliningLoad): Promise<PipeliningResult> {
  const vocab = BENCH_SHAPE.vocabSize;
  const system = load.systemTokens > 0 ? randomPrompt(new SeededRandom(7), load.systemTokens, vocab) : [];
  const histories = load.historyTokens > 0 ? Array.from({ length: CONCURRENT }, (_, i) => randomPrompt(new SeededRandom(100 + i), load.historyTokens, vocab)) : [];
  // A round asks for CONCURRENT prompts: with histories, one turn of each conversation.
  const prompter = () => {
    let turns = 0;
    return (rng: SeededRandom) => {
      const userTurn = randomPrompt(rng, load.userTokens + 1, vocab).slice(1);
      return [...(histories.length ? histories[turns++ % histories.length] : system), ...userTurn];
    };
  };
  const opts = { modelDir: dir, workers: 2, kvCacheBytes: load.kvCacheBytes, planLoad: { batch: CONCURRENT / 2, contextTokens: load.midContext, sharedPrefixTokens: load.systemTokens } };
  const noWork = (): StageWork => ({ wallSeconds: 0, tokens: 0, stageSeconds: [], decodeSeconds: [], decodeSteps: [], decodeTokens: [], cpuSeconds: 0, stealSeconds: 0 });
  return withCluster(ctx, { ...opts, pipelining: false }, (offCluster) =>
    withCluster(ctx, opts, async (onCluster) => {
      // The same prompts, round for round, on both clusters.
      const measured = (cluster: LocalCluster) => ({ cluster, rounds: new ThroughputRounds(cluster, CONCURRENT, prompter(), load.newTokens, GREEDY), work: noWork(), samples: [] as number[], firstTokenMs: [] as number[] });
      const off = measured(offCluster);
      const on = measured(onCluster);
      for (const side of [off, on]) {
        // The cached prefixes are computed before timing: the system prompt by one request
        // (requests arriving together all miss the prefix cache), each history by a request of its own.
        const prefixes = system.length ? [system] : histories;
        await Promise.all(prefixes.map((promptIds) => side.cluster.engine.generate({ promptIds, maxTokens: 1, sampling: GREEDY, stopTokenIds: [] })));
        for (let i = 0; i < load.warmups; i++) await side.rounds.next();
      }
      for (let pair = 0; pair < load.pairs; pair++) {
        for (const side of pair % 2 === 0 ? [off, on] : [on, off]) {
          side.samples.push(await side.rounds.next(side.work));
          side.firstTokenMs.push(side.rounds.meanFirstTokenMs);
        }
      }
      const ratios = on.samples.map((tokS, i) => tokS / off.samples[i]);
      return { on: on.samples, off: off.samples, ratio: median(ratios), firstTokenMsOn: on.firstTokenMs, firstTokenMsOff: off.firstTokenMs, workOn: on.work, workOff: off.work, layers: onCluster.partition };
    }),
  );
}

/**
 * Rounds of `count` concurrent requests on one cluster, each round's aggregate generated tokens/s.
 * A fresh chat-load cluster's rounds measured 280, 332, 312 and, the fourth cluster in one
 * process, 340, 397, 410 tok/s: one warm-up left the first timed round short of a running server's.
 */
class ThroughputRounds {
  private readonly rng = new SeededRandom(3);
  /** The last round's mean time from its start to each request's first token, ms. */
  meanFirstTokenMs = 0;

  constructor(
    private readonly cluster: LocalCluster,
    private readonly count: number,
    private readonly prompt: (rng: SeededRandom) => number[],
    private readonly newTokens: number,
    private readonly sampling: SamplingParams,
  ) {}

  /** One round's tok/s; with `work`, its wall time, tokens and each stage's compute within it are added there. */
  async next(work?: StageWork): Promise<number> {
    const prompts = Array.from({ length: this.count }, () => this.prompt(this.rng));
    const before = work ? await clusterSeconds(this.cluster) : undefined;
    const started = performance.now();
    const firstTokenMs = prompts.map(() => 0);
    const results = await Promise.all(
      prompts.map((promptIds, i) =>
        this.cluster.engine.generate({ promptIds, maxTokens: this.newTokens, sampling: this.sampling, seed: 1, stopTokenIds: [], onToken: () => (firstTokenMs[i] ||= performance.now() - started) }),
      ),
    );
    const seconds = (performance.now() - started) / 1000;
    this.meanFirstTokenMs = firstTokenMs.reduce((a, b) => a + b, 0) / firstTokenMs.length;
    const tokens = results.reduce((a, r) => a + r.tokenIds.length, 0);
    if (work && before) {
      const after = await clusterSeconds(this.cluster);
      const since = (key: "stages" | "decodeSeconds" | "decodeSteps" | "decodeTokens") => after[key].map((v, i) => v - before[key][i]);
      addWork(work, {
        wallSeconds: seconds,
        tokens,
        stageSeconds: since("stages"),
        decodeSeconds: since("decodeSeconds"),
        decodeSteps: since("decodeSteps"),
        decodeTokens: since("decodeTokens"),
        cpuSeconds: after.cpu - before.cpu,
        stealSeconds: after.steal - before.steal,
      });
    }
    await this.cluster.waitForBlocksFreed();
    return tokens / seconds;
  }
}

/** Each round's tok/s, `runs` rounds after `warmups` untimed ones. */
async function throughputSamples(cluster: LocalCluster, count: number, prompt: (rng: SeededRandom) => number[], newTokens: number, runs = 2, warmups = WARMUP_ROUNDS, sampling: SamplingParams = GREEDY): Promise<number[]> {
  const rounds = new ThroughputRounds(cluster, count, prompt, newTokens, sampling);
  for (let i = 0; i < warmups; i++) await rounds.next();
  const samples: number[] = [];
  for (let i = 0; i < runs; i++) samples.push(await rounds.next());
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
      `2 worker processes, 1 onnxruntime thread each; ${CONCURRENT} concurrent requests, ${NEW_TOKENS} new tokens each, greedy. ` +
        `Loads: chat = one shared ${CHAT_LOAD.systemTokens}-token system prompt (prefix-cached) + a ${CHAT_LOAD.userTokens}-token user turn each; ` +
        `conversations = ${CONCURRENT} histories of ${CONVERSATIONS_LOAD.historyTokens} tokens, one each, prefix-cached before timing, + a ${CONVERSATIONS_LOAD.userTokens}-token user turn (KV budget ${CONVERSATIONS_LOAD.kvCacheBytes! / 2 ** 20} MiB per worker); ` +
        `short context = ${PROMPT_TOKENS}-token random prompts (batch32_vs_1, sampling). A pipelining-off and a pipelining-on cluster are up at once, ` +
        `each warmed by ${CHAT_LOAD.warmups} rounds (conversations: ${CONVERSATIONS_LOAD.warmups}), then their timed rounds interleave in pairs, one cluster computing at a time: ` +
        `${CHAT_LOAD.pairs} pairs at chat, ${CONVERSATIONS_LOAD.pairs} at conversations; each cluster's partition planned for its load ` +
        `(micro-batches of ${CONCURRENT / 2}, the context halfway through the output); on vs off is the median of the pairs' ratios`,
    );

    const figures: Record<string, number> = {};
    const chat = await comparePipelining(ctx, dir, CHAT_LOAD);
    const conversations = await comparePipelining(ctx, dir, CONVERSATIONS_LOAD);
    // The chat load's ceiling only: the busy shares and compute per token above measure the same
    // in the clusters themselves, for both loads.
    const chatCeiling = await pipeliningCeiling(dir, BENCH_SHAPE.numLayers / 2, CONCURRENT, CHAT_LOAD.midContext, CHAT_LOAD.systemTokens);
    const chatStages = await plannedStagesCeiling(dir, chat.layers, CONCURRENT, CHAT_LOAD.midContext, CHAT_LOAD.systemTokens);
    const conversationsStages = await plannedStagesCeiling(dir, conversations.layers, CONCURRENT, CONVERSATIONS_LOAD.midContext, 0);
    figures.pipelining_ceiling_planned_stages = chatStages.ratio;
    figures.pipelining_ceiling_planned_stages_conversations = conversationsStages.ratio;
    figures.pipelining_on_vs_off = chat.ratio;
    figures.pipelining_on_32_chat_tok_s = median(chat.on);
    figures.pipelining_off_32_chat_tok_s = median(chat.off);
    figures.pipelining_ceiling_same_load = chatCeiling.sameLoad;
    figures.two_process_parallelism = chatCeiling.twoProcesses;
    Object.assign(figures, whereTheRatioComesFrom(chat, ""));
    figures.pipelining_on_vs_off_conversations = conversations.ratio;
    figures.pipelining_on_conversations_tok_s = median(conversations.on);
    figures.pipelining_off_conversations_tok_s = median(conversations.off);
    Object.assign(figures, whereTheRatioComesFrom(conversations, "_conversations"));
    // What reading the shared system prompt once per step (split attention's shared past) gains:
    // the chat load's half-step at half the batch with that prompt in shared blocks, over the
    // same with every sequence's past in blocks of its own.
    const halfStep = (shared: number) => computeLoop(dir, [0, BENCH_SHAPE.numLayers / 2], CONCURRENT / 2, CHAT_LOAD.midContext, shared, COMPUTE_LOOP_SECONDS, 2);
    figures.shared_past_step_speedup = (await halfStep(CHAT_LOAD.systemTokens)) / (await halfStep(0));
    // 1 request, then 32, at short context in one cluster (pipelining on), side by side.
    await withCluster(ctx, { modelDir: dir, workers: 2, planLoad: { batch: CONCURRENT / 2, contextTokens: PROMPT_TOKENS + NEW_TOKENS / 2 } }, async (cluster) => {
      figures.single_request_tok_s = await throughput(cluster, 1, shortPrompt, NEW_TOKENS);
      // What sampling costs beside greedy decoding, same cluster and load: the last stage draws
      // every token of a 32,000-word vocabulary's distribution.
      figures.concurrent_32_tok_s = median(await throughputSamples(cluster, CONCURRENT, shortPrompt, NEW_TOKENS, 3, 2));
      // The greedy rounds before warmed the cluster up.
      figures.sampled_32_tok_s = median(await throughputSamples(cluster, CONCURRENT, shortPrompt, NEW_TOKENS, 2, 0, SAMPLED));
      figures.sampled_vs_greedy = figures.sampled_32_tok_s / figures.concurrent_32_tok_s;

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

    // The compute loops run one after another, seconds apart: on a host whose speed drifts, a
    // ceiling can come out below what the clusters reached, which says the drift, not a limit.
    const drifted = (label: string, value: number, reached: number) =>
      value < reached && fmt(value) !== fmt(reached) ? [[`${label}: that ceiling is below the clusters' own ${fmt(reached)}x: this host's speed drifted between its loops`, "", ""]] : [];
    const ceilingRows = ({ label, midContext, systemTokens }: PipeliningLoad, c: PipeliningCeiling, r: PipeliningResult) => [
      [`${label}: ${BENCH_SHAPE.numLayers / 2}-layer half-steps/s at ${midContext} tokens in${systemTokens ? ` (${systemTokens} shared)` : ""}: batch ${CONCURRENT} alone / batch ${CONCURRENT / 2} alone / batch ${CONCURRENT / 2} beside another`, "steps/s", `${fmt(c.wholeBatchAlone)} / ${fmt(c.halfBatchAlone)} / ${fmt(c.halfBatchBesideAnother)}`],
      [`${label}: 2 processes at batch ${CONCURRENT / 2} at once vs 1`, "ratio", `${fmt(c.twoProcesses)}x`],
      [`${label}: most pipelining can gain here at this load`, "ratio", `${fmt(c.sameLoad)}x`],
      ...drifted(label, c.sameLoad, r.ratio),
    ];
    const stageRows = ({ label }: PipeliningLoad, r: PipeliningResult, c: PlannedStagesCeiling) => [
      [
        `${label}: ${describePartition(r.layers)}'s decode steps outside a cluster, batch ${CONCURRENT} each alone / batch ${CONCURRENT / 2} all at once`,
        "ms",
        c.wholeBatchAloneMs.map((ms, i) => `${fmt(ms)} / ${fmt(c.halfBatchTogetherMs[i])}`).join(", "),
      ],
      [`${label}: the most pipelining can gain over those stages here (off: their steps in turn; on: the slowest)`, "ratio", `${fmt(c.ratio)}x`],
      ...drifted(label, c.ratio, r.ratio),
    ];
    const workRows = ({ label }: PipeliningLoad, r: PipeliningResult) => [
      [`${label}: share of the stages' time computing (their own step timings), on / off`, "share", `${fmt(busyShare(r.workOn))} / ${fmt(busyShare(r.workOff))}`],
      [`${label}: stage compute per token, on vs off`, "ratio", `${fmt(computePerTokenOnVsOff(r))}x`],
      [`${label}: share of the machine's ${availableParallelism()} cores the cluster's processes used, on / off`, "share", `${fmt(cpuShare(r.workOn))} / ${fmt(cpuShare(r.workOff))}`],
      [`${label}: on vs off had on kept every core busy at its CPU per token`, "ratio", `${fmt(r.ratio / cpuShare(r.workOn))}x`],
      [`${label}: share of the cores' time the host's hypervisor took (steal), on / off rounds`, "share", `${fmt(stealShare(r.workOn))} / ${fmt(stealShare(r.workOff))}`],
      [`${label}: each stage's mean decode step, on / off`, "ms", decodeStepMs(r.workOn).map((on, i) => `${fmt(on)} / ${fmt(decodeStepMs(r.workOff)[i])}`).join(", ")],
      [
        `${label}: each stage's compute in prefill steps per round, on / off`,
        "ms",
        prefillMsPerRound(r.workOn, r.on.length).map((on, i) => `${fmt(on)} / ${fmt(prefillMsPerRound(r.workOff, r.off.length)[i])}`).join(", "),
      ],
      [`${label}: on vs off in decode steps alone (off: the stages' steps in turn; on: the slowest stage's)`, "ratio", `${fmt(decodePaceOnVsOff(r))}x`],
      [`${label}: on, the slowest stage's decode step over the stages' mean`, "ratio", `${fmt(stageBalance(r.workOn))}x`],
      [`${label}: on, the busiest stage's compute in prefill steps`, "share", fmt(prefillShareOfBusiestStage(r.workOn))],
      [`${label}: mean time to a request's first token in a round, on / off (medians over rounds)`, "ms", `${fmt(median(r.firstTokenMsOn))} / ${fmt(median(r.firstTokenMsOff))}`],
      [`${label}: on vs off had on's busiest stage never waited (stage compute per token: off's stages in turn, on's busiest)`, "ratio", `${fmt(busiestStageBound(r))}x`],
    ];
    for (const line of table([
      ["load", "figure", "value"],
      [`${CHAT_LOAD.label}, pipelining on (2 micro-batches in flight), ${describePartition(chat.layers)}`, "tok/s", `${fmt(median(chat.on))}  (${chat.on.map(fmt).join(" ")})`],
      [`${CHAT_LOAD.label}, pipelining off (1 in flight)`, "tok/s", `${fmt(median(chat.off))}  (${chat.off.map(fmt).join(" ")})`],
      ["pipelining_on_vs_off (chat; goal >= 1.6)", "ratio", `${fmt(chat.ratio)}x`],
      ...workRows(CHAT_LOAD, chat),
      ...stageRows(CHAT_LOAD, chat, chatStages),
      ...ceilingRows(CHAT_LOAD, chatCeiling, chat),
      [`${CONVERSATIONS_LOAD.label}, pipelining on, ${describePartition(conversations.layers)}`, "tok/s", `${fmt(median(conversations.on))}  (${conversations.on.map(fmt).join(" ")})`],
      [`${CONVERSATIONS_LOAD.label}, pipelining off`, "tok/s", `${fmt(median(conversations.off))}  (${conversations.off.map(fmt).join(" ")})`],
      ["pipelining_on_vs_off_conversations", "ratio", `${fmt(conversations.ratio)}x`],
      ...workRows(CONVERSATIONS_LOAD, conversations),
      ...stageRows(CONVERSATIONS_LOAD, conversations, conversationsStages),
      [`${CHAT_LOAD.label}: ${BENCH_SHAPE.numLayers / 2}-layer half-step at batch ${CONCURRENT / 2}, system prompt read once for the batch vs once per sequence`, "ratio", `${fmt(figures.shared_past_step_speedup)}x`],
      ["short context, 1 request", "tok/s", fmt(figures.single_request_tok_s)],
      ["short context, 32 requests, same cluster", "tok/s", fmt(figures.concurrent_32_tok_s)],
      ["batch32_vs_1 (short context, pipelining on; goal >= 6)", "ratio", `${fmt(figures.batch32_vs_1)}x`],
      [`short context, 32 requests sampled (temperature ${SAMPLED.temperature}, top_p ${SAMPLED.topP}) / greedy, same cluster`, "tok/s", `${fmt(figures.sampled_32_tok_s)} / ${fmt(figures.concurrent_32_tok_s)}`],
      ["sampled_vs_greedy", "ratio", `${fmt(figures.sampled_vs_greedy)}x`],
      [`${SYSTEM_PROMPT_TOKENS}-token system prompt + 15 user tokens, miss`, "TTFT ms", fmt(figures.prefix_ttft_miss_ms)],
      [`${SYSTEM_PROMPT_TOKENS}-token system prompt + 15 user tokens, hit`, "TTFT ms", fmt(figures.prefix_ttft_hit_ms)],
      ["prefix_ttft_hit_vs_miss (goal >= 5)", "ratio", `${fmt(figures.prefix_ttft_hit_vs_miss)}x`],
    ])) ctx.print(line);

    // The bundled model, 32 concurrent 64-token requests over 2 worker processes.
    const source = await openModel(BUNDLED_MODEL_DIR);
    ctx.print(describeModel(BUNDLED_MODEL_DIR, source.config));
    await source.close();
    // A round here is 64 steps of a few hundred microseconds: rounds climbed from ~6,000-7,000 to
    // ~12,000-17,000 tok/s over a fresh cluster's first ~12 (V8 tiering up the per-step code), so
    // 4 warm-ups measured the climb (7,800-14,500 over runs of the same code).
    const warmups = 16;
    const runs = 7;
    await withCluster(ctx, { modelDir: BUNDLED_MODEL_DIR, workers: 2 }, async (cluster) => {
      figures.aggregate_32_tok_s = await throughput(cluster, CONCURRENT, () => [1], 64, runs, warmups);
    });
    ctx.print(`  ${CONCURRENT} concurrent requests, BOS prompt, 64 new tokens, 2 worker processes, median of ${runs} runs after ${warmups} warm-ups: ${fmt(figures.aggregate_32_tok_s)} tok/s aggregate (llama.cpp server, 8 slots: 7,178 tok/s; goal >= 7,200)`);
    return Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, round(v)]));
  },
};
