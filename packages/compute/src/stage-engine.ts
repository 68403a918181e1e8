import * as ort from "onnxruntime-node";
import { NO_BLOCK, blocksForKvBudget, kvBytesPerBlock, type KvDtype } from "@strata/kv";
import { toRotateHalfLayout, type LoraAdapter, type StageWeights } from "@strata/model";
import { layerWeightCount } from "@strata/planner";
import { LORA_IO, loraInputShapes, packLoraAdapter, type LoraInput } from "./lora-pack.ts";
import { KvStore, type KvChunk } from "./kv-store.ts";
import { availableMemoryBytes } from "./host-memory.ts";
import { createSessionRunner, type SessionRunner } from "./session-runner.ts";
import { buildStageGraph, defaultAttentionForm, pastKvPoolInput, sharedPastKvPoolInput, STAGE_IO, type AttentionForm } from "./stage-graph.ts";

export type Device = "cpu" | "cuda";

export class DeviceUnavailableError extends Error {
  override name = "DeviceUnavailableError";
}

/** A KV budget (kvMemoryFraction of the memory available) that holds no whole block. */
export class KvBudgetError extends Error {
  override name = "KvBudgetError";
}

/** One sequence's share of a micro-batch, with the physical blocks that hold its KV on this stage. */
export interface StageChunk {
  seqId: number;
  startPosition: number;
  numTokens: number;
  tokenIds?: ArrayLike<number>; // first stage only
  blockTable: readonly number[]; // must cover [0, startPosition + numTokens)
  adapter?: string; // a LoRA adapter set with setAdapter; none is the base model
}

export interface StageOutput {
  hidden?: Float32Array; // [totalTokens, hidden] packed in chunk order (all but the last stage)
  // [chunks, vocab]: each chunk's last position (last stage), unless forward was told not to
  // fetch them.
  logits?: Float32Array;
  // [chunks]: the token of each chunk's highest logit, the lowest id among equals, as argmax in
  // @strata/sampling picks it (last stage).
  greedyTokens?: Int32Array;
  /** When the step began computing, where it may have waited behind earlier ones (see ThreadedStageEngine). */
  startedUnixMs?: number;
}

/** What a last stage's forward returns beside the greedy tokens. */
export interface ForwardWants {
  /**
   * The logits (default true). A step whose sequences all decode greedily and return no logits
   * takes greedyTokens alone: fetching 16 rows of a 32,000-word vocabulary cost a 2 MB copy a step
   * (onnxruntime-node copies every output it returns) and, beside it, ~0.7 ms of argmax in JS.
   */
  logits?: boolean;
}

export interface StageEngineOptions {
  /** KV blocks to allocate; without it, kvMemoryFraction sizes the cache. */
  numBlocks?: number;
  /**
   * Instead of numBlocks: this fraction (0 to 1) of the memory the host has available
   * (availableMemoryBytes) once the stage's compute session is built, its weights in it, in whole
   * blocks of the stage's layers and dtype. The loader's arrays may not be collected yet then, so
   * the budget errs low by up to a few copies of the stage's weights.
   */
  kvMemoryFraction?: number;
  blockSizeTokens: number;
  firstStage: boolean;
  lastStage: boolean;
  device?: Device;
  intraOpThreads?: number;
  /** The engine on a thread of its own (createStageCompute; see ThreadedStageEngine). */
  computeThread?: boolean;
  /** How the KV blocks are stored (default fp32); compute is float32 either way. */
  kvDtype?: KvDtype;
  /** Largest LoRA rank this stage can serve; 0 (default) builds a graph without adapters. */
  maxLoraRank?: number;
  /** How layers attend (default: defaultAttentionForm of the model). */
  attention?: AttentionForm;
}

/** What a worker needs of a stage's compute: a StageEngine, on the calling thread or on one of its own. */
export interface StageCompute {
  /** Shared-past reads so far (see StageEngine.sharedPast), as of the last step that finished. */
  readonly sharedPast: { readonly positionsRead: number; readonly positionReadsSaved: number };
  /**
   * True when forward returns before computing: steps then queue up behind each other and the
   * caller's thread stays free meanwhile (to read and admit the next micro-batch, answer health
   * checks and metrics scrapes, and take NATS events).
   */
  readonly computesAside: boolean;
  /** Why this engine can compute no more (its thread is gone), if so: every step then fails with it. */
  readonly failure: Error | undefined;
  /** KV blocks the stage's cache holds. */
  readonly numBlocks: number;
  forward(chunks: readonly StageChunk[], hidden?: Float32Array, wants?: ForwardWants): Promise<StageOutput>;
  setAdapter(id: string, adapter: LoraAdapter): void;
  removeAdapter(id: string): boolean;
  close(): Promise<void>;
}

const MASKED = -1e30;

/** Throws a RangeError unless `fraction` is a share of memory a KV cache can be sized by: (0, 1]. */
export function checkKvMemoryFraction(fraction: number): void {
  if (!(fraction > 0 && fraction <= 1)) throw new RangeError(`kvMemoryFraction must be more than 0 and at most 1, got ${fraction}`);
}

function checkKvSizing(opts: StageEngineOptions): void {
  if (opts.numBlocks === undefined && opts.kvMemoryFraction === undefined) throw new RangeError("a stage engine needs numBlocks or kvMemoryFraction");
  if (opts.kvMemoryFraction !== undefined) checkKvMemoryFraction(opts.kvMemoryFraction);
}

/** Whole KV blocks of the stage's layers in opts.kvMemoryFraction of the memory available now. */
function kvBlocksForMemoryFraction(weights: StageWeights, opts: StageEngineOptions): number {
  const fraction = opts.kvMemoryFraction!;
  const c = weights.config;
  const layout = { numLayers: weights.layerEnd - weights.layerStart, numKvHeads: c.numKvHeads, headDim: c.headDim, blockSizeTokens: opts.blockSizeTokens, kvDtype: opts.kvDtype ?? "fp32" };
  const available = availableMemoryBytes();
  const blocks = blocksForKvBudget(Math.floor(fraction * available), layout);
  if (blocks < 1) {
    throw new KvBudgetError(
      `kv_memory_fraction ${fraction} of the host's available memory (${available} bytes) holds no block of ${layout.blockSizeTokens} tokens at ${kvBytesPerBlock(layout)} bytes/block (${layout.kvDtype})`,
    );
  }
  return blocks;
}

/**
 * Runs one stage's layers over a micro-batch. Owns the stage's KV cache (a KvStore: for every
 * layer, K and V pools shaped [numBlocks, blockSizeTokens, kvHeads, headDim] in the chosen dtype),
 * gathered into float32 for each step and written back from it.
 */
export class StageEngine implements StageCompute {
  /** Computes on the caller's thread: forward settles with its step done. */
  readonly computesAside = false;
  readonly failure = undefined;
  readonly kv: KvStore;
  readonly hiddenSize: number;
  readonly vocabSize: number;
  private readonly kvRow: number; // floats per token per layer
  // Each resident adapter's LoRA inputs (and the base model's zeros), built once and fed as they are.
  private readonly adapters = new Map<string | undefined, Record<string, ort.Tensor>>();
  // Split attention reads the past a step's sequences share once for all of them (sharedPastKv).
  private readonly sharesPast: boolean;
  /**
   * Shared past read so far: positions read once for a whole step (per session.run), and the
   * per-sequence reads of those positions that saved (positions × (sequences - 1)).
   */
  readonly sharedPast = { positionsRead: 0, positionReadsSaved: 0 };
  private runCount = 0;
  // What one more session.run costs, in padded rows of this stage's layers (see runsByLength).
  private readonly runCostInRows: number;
  // What one sequence's read of one past position costs, in rows (see POSITION_READ_MACS_PER_HEAD_DIM).
  private readonly positionReadCostInRows: number;

  // The stage's shape only: its weights live in onnxruntime's session, and a reference to the
  // arrays they came from here would keep a second copy of them for the engine's lifetime.
  private readonly weights: Pick<StageWeights, "config" | "layerStart" | "layerEnd">;

  private constructor(
    private readonly session: SessionRunner,
    weights: StageWeights,
    private readonly opts: StageEngineOptions,
    readonly numBlocks: number,
  ) {
    this.weights = { config: weights.config, layerStart: weights.layerStart, layerEnd: weights.layerEnd };
    const c = weights.config;
    this.hiddenSize = c.hiddenSize;
    this.vocabSize = c.vocabSize;
    this.kvRow = c.numKvHeads * c.headDim;
    this.kv = new KvStore({
      numLayers: weights.layerEnd - weights.layerStart,
      numBlocks,
      blockSizeTokens: opts.blockSizeTokens,
      numKvHeads: c.numKvHeads,
      headDim: c.headDim,
      kvDtype: opts.kvDtype ?? "fp32",
    });
    if (this.maxLoraRank > 0) this.adapters.set(undefined, this.loraFeeds());
    this.sharesPast = (opts.attention ?? defaultAttentionForm(c)) === "split";
    this.runCostInRows = Math.max(1, RUN_COST_MACS / (this.layerCount * layerWeightCount(c)));
    this.positionReadCostInRows = (POSITION_READ_MACS_PER_HEAD_DIM * c.numHeads * c.headDim) / layerWeightCount(c);
  }

  /** session.run calls made so far (a step makes more than one for several adapters or lengths). */
  get runs(): number {
    return this.runCount;
  }

  get maxLoraRank(): number {
    return this.opts.maxLoraRank ?? 0;
  }

  /** Makes an adapter (its matrices for this stage's layers) servable as `id`, replacing any before. */
  setAdapter(id: string, adapter: LoraAdapter): void {
    // Packing checks the adapter fits (checkLoraAdapter).
    this.adapters.set(id, this.loraFeeds(adapter));
  }

  removeAdapter(id: string): boolean {
    return this.adapters.delete(id);
  }

  hasAdapter(id: string): boolean {
    return this.adapters.has(id);
  }

  adapterIds(): string[] {
    return [...this.adapters.keys()].filter((id): id is string => id !== undefined);
  }

  private loraFeeds(adapter?: LoraAdapter): Record<string, ort.Tensor> {
    const c = this.weights.config;
    const L = this.layerCount;
    const packed = packLoraAdapter(c, L, this.maxLoraRank, 1 / Math.sqrt(c.headDim), adapter);
    const shapes = loraInputShapes(c, L, this.maxLoraRank);
    const feeds: Record<string, ort.Tensor> = {};
    for (const [input, data] of Object.entries(packed) as [LoraInput, Float32Array][]) feeds[LORA_IO[input]] = new ort.Tensor("float32", data, shapes[input]);
    return feeds;
  }

  static async create(weights: StageWeights, opts: StageEngineOptions): Promise<StageEngine> {
    checkKvSizing(opts);
    const rotated = toRotateHalfLayout(weights);
    const graph = buildStageGraph(rotated, { firstStage: opts.firstStage, lastStage: opts.lastStage, maxLoraRank: opts.maxLoraRank, attention: opts.attention });
    const device = opts.device ?? "cpu";
    let session: SessionRunner;
    try {
      session = await createSessionRunner(graph, {
        executionProviders: [device],
        graphOptimizationLevel: "all",
        executionMode: "sequential",
        intraOpNumThreads: opts.intraOpThreads ?? 1,
        interOpNumThreads: 1,
      });
    } catch (error) {
      if (device !== "cuda") throw error;
      throw new DeviceUnavailableError(
        `the CUDA execution provider could not start (${(error as Error).message}). onnxruntime-node ships only the CPU ` +
          `provider; its install script fetches the CUDA provider libraries on a machine with CUDA 12 and network access ` +
          `(ONNXRUNTIME_NODE_INSTALL=cuda12 pnpm rebuild onnxruntime-node), or use --device cpu`,
      );
    }
    // Measured with the session built: onnxruntime holds its own copy of the weights by then.
    return new StageEngine(session, rotated, opts, opts.numBlocks ?? kvBlocksForMemoryFraction(weights, opts));
  }

  /** Ends the compute thread, if any; the engine cannot run after this. */
  close(): Promise<void> {
    return this.session.close();
  }

  get layerCount(): number {
    return this.weights.layerEnd - this.weights.layerStart;
  }

  /**
   * One step of a micro-batch. Sequences of different adapters run as one session.run per
   * adapter (each feeds its own LoRA matrices), and chunks of very different lengths as runs of
   * their own where padding them to one length would cost more than a run (see runsByLength);
   * outputs come back in chunk order.
   */
  async forward(chunks: readonly StageChunk[], hidden?: Float32Array, wants: ForwardWants = {}): Promise<StageOutput> {
    for (const c of chunks) {
      if (!this.adapters.has(c.adapter) && (c.adapter !== undefined || this.maxLoraRank > 0)) throw new RangeError(`unknown LoRA adapter "${c.adapter}" on this stage`);
    }
    const byAdapter = groupIndexes(chunks.keys(), (i) => chunks[i].adapter);
    const groups = [...byAdapter.values()]
      .flatMap((members) => runsByLength(members.map((i) => chunks[i].numTokens), this.runCostInRows).map((run) => run.map((k) => members[k])))
      .flatMap((run) => (this.sharesPast ? runsByPrefix(run, chunks, this.opts.blockSizeTokens, this.runCostInRows, this.positionReadCostInRows) : [run]));
    this.runCount += groups.length;
    const wantLogits = wants.logits ?? true;
    if (groups.length <= 1) return this.forwardGroup(chunks, hidden, wantLogits);
    const D = this.hiddenSize;
    const rowStart: number[] = [];
    let rows = 0;
    for (const c of chunks) {
      rowStart.push(rows);
      rows += c.numTokens;
    }
    const out: StageOutput = this.opts.lastStage
      ? { greedyTokens: new Int32Array(chunks.length), logits: wantLogits ? new Float32Array(chunks.length * this.vocabSize) : undefined }
      : { hidden: new Float32Array(rows * D) };
    for (const members of groups) {
      const part = members.map((i) => chunks[i]);
      const partHidden = hidden && concatRows(members.map((i) => hidden.subarray(rowStart[i] * D, (rowStart[i] + chunks[i].numTokens) * D)));
      const result = await this.forwardGroup(part, partHidden, wantLogits);
      let offset = 0;
      members.forEach((i, j) => {
        if (result.greedyTokens) {
          out.greedyTokens![i] = result.greedyTokens[j];
          out.logits?.set(result.logits!.subarray(j * this.vocabSize, (j + 1) * this.vocabSize), i * this.vocabSize);
        } else {
          const n = chunks[i].numTokens * D;
          out.hidden!.set(result.hidden!.subarray(offset, offset + n), rowStart[i] * D);
          offset += n;
        }
      });
    }
    return out;
  }

  private async forwardGroup(chunks: readonly StageChunk[], hidden: Float32Array | undefined, wantLogits: boolean): Promise<StageOutput> {
    const { blockSizeTokens: bs, firstStage, lastStage } = this.opts;
    const D = this.hiddenSize;
    const hd = this.weights.config.headDim;
    const row = this.kvRow;
    const B = chunks.length;
    const T = Math.max(...chunks.map((c) => c.numTokens));
    // Past length padded to whole blocks: fewer distinct shapes, so onnxruntime's per-shape memory
    // plans are reused from step to step instead of rebuilt for every new length. The first Ps
    // positions are the shared past when the graph reads one; each sequence's own past then
    // starts there, so a key's column is its position either way.
    const P = Math.ceil(Math.max(...chunks.map((c) => c.startPosition)) / bs) * bs;
    const Ps = this.sharesPast ? sharedPastBlocks(chunks, bs) * bs : 0;
    const S = P + T;
    const uniform = chunks.every((c) => c.numTokens === T);

    const feeds: Record<string, ort.Tensor> = {};
    if (firstStage) {
      const ids = new BigInt64Array(B * T);
      chunks.forEach((c, b) => {
        const tokens = c.tokenIds!;
        for (let t = 0; t < c.numTokens; t++) ids[b * T + t] = BigInt(tokens[t]);
      });
      feeds[STAGE_IO.inputIds] = new ort.Tensor("int64", ids, [B, T]);
    } else {
      feeds[STAGE_IO.hiddenIn] = new ort.Tensor("float32", uniform ? hidden! : padRows(hidden!, chunks, T, D), [B, T, D]);
    }

    const window = this.weights.config.slidingWindow ?? Infinity;
    const positions = new BigInt64Array(B * T);
    const mask = new Float32Array(B * T * S).fill(MASKED);
    chunks.forEach((c, b) => {
      for (let t = 0; t < T; t++) {
        // Padded slots repeat the last real position; their outputs are never read.
        positions[b * T + t] = BigInt(c.startPosition + Math.min(t, c.numTokens - 1));
        // Past keys of this sequence, then this step's keys up to and including the query, all
        // within the sliding window when the model has one. Padded query rows see only finite
        // keys, so nothing turns into NaN.
        const query = c.startPosition + t;
        const firstKey = Math.max(0, query - window + 1);
        const maskRow = (b * T + t) * S;
        mask.fill(0, maskRow + Math.min(firstKey, c.startPosition), maskRow + c.startPosition);
        mask.fill(0, maskRow + P + Math.max(0, firstKey - c.startPosition), maskRow + P + t + 1);
      }
    });
    feeds[STAGE_IO.positions] = new ort.Tensor("int64", positions, [B, T]);
    feeds[STAGE_IO.mask] = new ort.Tensor("float32", mask, [B, 1, T, S]);

    // Every layer's past K and V from the blocks, decoded to float32, one tensor per pool.
    const KV = this.weights.config.numKvHeads;
    if (this.sharesPast) {
      this.kv.gatherSharedPools(chunks[0].blockTable.slice(0, Ps / bs), Ps).forEach((past, j) => (feeds[sharedPastKvPoolInput(j)] = new ort.Tensor("float32", past, [KV, Ps, hd])));
    }
    this.sharedPast.positionsRead += Ps;
    this.sharedPast.positionReadsSaved += Ps * (B - 1);
    const ownPast = Ps === 0 ? chunks : chunks.map((c) => ({ startPosition: c.startPosition - Ps, numTokens: c.numTokens, blockTable: c.blockTable.slice(Ps / bs) }));
    this.kv.gatherPools(ownPast, P - Ps).forEach((past, j) => (feeds[pastKvPoolInput(j)] = new ort.Tensor("float32", past, [B, KV, P - Ps, hd])));
    if (lastStage) {
      feeds[STAGE_IO.lastIndex] = new ort.Tensor(
        "int64",
        BigInt64Array.from(chunks, (c, b) => BigInt(b * T + c.numTokens - 1)),
        [B],
      );
    }

    if (this.maxLoraRank > 0) Object.assign(feeds, this.adapters.get(chunks[0].adapter));
    const fetch = lastStage ? [STAGE_IO.newKv, STAGE_IO.greedyToken, ...(wantLogits ? [STAGE_IO.logits] : [])] : [STAGE_IO.newKv, STAGE_IO.hiddenOut];
    const out = await this.session.run(feeds, fetch);
    this.kv.scatter(chunks, T, out[STAGE_IO.newKv].data as Float32Array);
    if (lastStage) {
      return {
        greedyTokens: Int32Array.from(out[STAGE_IO.greedyToken].data as BigInt64Array, Number),
        logits: wantLogits ? (out[STAGE_IO.logits].data as Float32Array) : undefined,
      };
    }
    const padded = out[STAGE_IO.hiddenOut].data as Float32Array;
    return { hidden: uniform ? padded : packRows(padded, chunks, T, D) };
  }
}

/**
 * A session.run's fixed cost as multiply-adds: ~1.3 ms of a 5-layer decode step of the bench
 * model (hidden 512) here, beside ~0.49 ms per row at ~30 G multiply-adds/s. So a padded row of
 * that stage costs ~1/3 of a run, and one of stories260K's (~45 k multiply-adds a layer) ~1/300.
 */
const RUN_COST_MACS = 40e6;

/**
 * A past position one sequence reads, per query head and head dimension, as multiply-adds: 2 (its
 * score and its share of the weighted sum) times ~6, for the memory-bound read of a sequence's
 * own past. Measured on the bench model (16 sequences 1,056 tokens in, 4 layers): 1,024 positions
 * read once for the batch instead of 16 times saved ~14.6 ms of a ~25.6 ms step, ~1/480 of a row
 * per position read, where counting multiply-adds alone gives ~1/2,900.
 */
const POSITION_READ_MACS_PER_HEAD_DIM = 12;

/**
 * Chunks (by their token counts) split into runs of one padded length each, least total cost:
 * a run costs `runCostInRows`, plus its longest chunk's length for each of its chunks. Padded
 * into one run, a 1,000-token prompt joining 15 decoding requests on the bench model stalled them
 * all for 8-15 s; run apart, 1.0-1.2 s. Runs hold indexes into `lengths`; one run when the
 * lengths are equal or padding is cheap.
 */
export function runsByLength(lengths: readonly number[], runCostInRows: number): number[][] {
  const order = lengths.map((_, i) => i).sort((a, b) => lengths[b] - lengths[a]);
  const n = order.length;
  if (n === 0 || lengths[order[0]] === lengths[order[n - 1]]) return [lengths.map((_, i) => i)];
  // best[j]: least cost of the j longest chunks; a run is a range of the longest-first order.
  const best = new Array<number>(n + 1).fill(Infinity);
  const start = new Array<number>(n + 1).fill(0);
  best[0] = 0;
  for (let j = 1; j <= n; j++) {
    for (let i = 0; i < j; i++) {
      const cost = best[i] + runCostInRows + (j - i) * lengths[order[i]];
      if (cost < best[j]) [best[j], start[j]] = [cost, i];
    }
  }
  const runs: number[][] = [];
  for (let j = n; j > 0; j = start[j]) runs.unshift(order.slice(start[j], j).sort((a, b) => a - b));
  return runs;
}

/**
 * A run's chunks (indexes `run` into `chunks`) split by the cached prefix they begin with (their
 * first block), each group of two or more a run of its own that reads its prefix once, the rest
 * together; where the past-position reads saved (costing `positionReadCostInRows` each) outweigh
 * the runs added. Sequences behind two different 1,024-token prompts, 8 of each, 1,056 tokens in
 * (bench model, 4 layers): 29-34 ms a step as one run, which shares nothing; 15.5-16.3 ms as a run
 * per prompt.
 */
export function runsByPrefix(run: readonly number[], chunks: readonly KvChunk[], bs: number, runCostInRows: number, positionReadCostInRows: number): number[][] {
  const byFirstBlock = groupIndexes(run, (i) => (chunks[i].startPosition >= bs ? chunks[i].blockTable[0] : NO_BLOCK));
  if (byFirstBlock.size <= 1) return [[...run]];
  const rest = byFirstBlock.get(NO_BLOCK) ?? [];
  byFirstBlock.delete(NO_BLOCK);
  const groups: number[][] = [];
  let positionsSaved = 0;
  for (const members of byFirstBlock.values()) {
    if (members.length < 2) rest.push(...members);
    else {
      groups.push(members);
      positionsSaved += (members.length - 1) * sharedPastBlocks(members.map((i) => chunks[i]), bs) * bs;
    }
  }
  if (rest.length > 0) groups.push(rest.sort((a, b) => a - b));
  return groups.length > 1 && positionsSaved * positionReadCostInRows > (groups.length - 1) * runCostInRows ? groups : [[...run]];
}

/** Indexes grouped by `key`, each group in the order given, groups in order of first appearance. */
function groupIndexes<K>(indexes: Iterable<number>, key: (i: number) => K): Map<K, number[]> {
  const groups = new Map<K, number[]>();
  for (const i of indexes) {
    const members = groups.get(key(i));
    if (members) members.push(i);
    else groups.set(key(i), [i]);
  }
  return groups;
}

/**
 * Leading blocks every chunk reads as past from the same physical blocks (a prefix-cache hit they
 * all share), 0 for a batch of one: reading them once for all is the gain.
 */
function sharedPastBlocks(chunks: readonly KvChunk[], bs: number): number {
  if (chunks.length < 2) return 0;
  const first = chunks[0].blockTable;
  const limit = Math.min(...chunks.map((c) => Math.floor(c.startPosition / bs)));
  let n = 0;
  while (n < limit && first[n] !== NO_BLOCK && chunks.every((c) => c.blockTable[n] === first[n])) n++;
  return n;
}

function concatRows(parts: Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((s, p) => s + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

function padRows(packed: Float32Array, chunks: readonly StageChunk[], T: number, D: number): Float32Array {
  const out = new Float32Array(chunks.length * T * D);
  let offset = 0;
  chunks.forEach((c, b) => {
    out.set(packed.subarray(offset * D, (offset + c.numTokens) * D), b * T * D);
    offset += c.numTokens;
  });
  return out;
}

function packRows(padded: Float32Array, chunks: readonly StageChunk[], T: number, D: number): Float32Array {
  const total = chunks.reduce((a, c) => a + c.numTokens, 0);
  const out = new Float32Array(total * D);
  let offset = 0;
  chunks.forEach((c, b) => {
    out.set(padded.subarray(b * T * D, (b * T + c.numTokens) * D), offset * D);
    offset += c.numTokens;
  });
  return out;
}
