import { blocksForKvBudget, simulateKvWaste, type KvWasteRequest, type KvWasteResult } from "@strata/kv";
import { SeededRandom } from "@strata/sampling";
import { fmt, table, type BenchPart } from "./support.ts";
import { BENCH_SHAPE, describeShape } from "./synthetic.ts";

/** The stated length distribution: lognormal prompt and output lengths, clamped. */
export const KV_LOAD = {
  promptMu: Math.log(200),
  promptSigma: 0.6,
  outputMu: Math.log(150),
  outputSigma: 0.7,
  maxTokens: 512,
  contextTokens: BENCH_SHAPE.maxPositionEmbeddings ?? 2048, // the synthetic models' default
  requests: 8000,
  seed: 7,
};

/** One of the bench model's two stages (4 of its 8 layers) with this many bytes of KV per worker. */
export const KV_STAGE_LAYERS = BENCH_SHAPE.numLayers / 2;
export const KV_STAGE_BUDGET_BYTES = 256 * 1024 * 1024;
export const KV_BLOCK_SIZE_TOKENS = 16;
// Before this the first cohort, all admitted at once, has not turned over (outputs reach 512).
export const KV_WARMUP_STEPS = 2 * KV_LOAD.maxTokens;

export function describeKvLoad(): string {
  const l = KV_LOAD;
  return (
    `${l.requests} requests all queued at step 0 (memory-bound steady state), lognormal prompt mu=ln(200) sigma=${l.promptSigma}, ` +
    `output mu=ln(150) sigma=${l.outputSigma} (seed ${l.seed}), max_tokens ${l.maxTokens}, prompts clamped to context ${l.contextTokens} - max_tokens; ` +
    `measured after ${KV_WARMUP_STEPS} warm-up steps while requests still wait`
  );
}

function lognormal(rng: SeededRandom, mu: number, sigma: number): number {
  // Box-Muller; 1 - u keeps the log finite.
  const z = Math.sqrt(-2 * Math.log(1 - rng.next())) * Math.cos(2 * Math.PI * rng.next());
  return Math.exp(mu + sigma * z);
}

export function kvRequests(): KvWasteRequest[] {
  const l = KV_LOAD;
  const rng = new SeededRandom(l.seed);
  return Array.from({ length: l.requests }, () => {
    const promptLen = Math.min(Math.max(1, Math.round(lognormal(rng, l.promptMu, l.promptSigma))), l.contextTokens - l.maxTokens);
    const outputLen = Math.min(Math.max(1, Math.round(lognormal(rng, l.outputMu, l.outputSigma))), l.maxTokens);
    return { arrivalStep: 0, promptLen, outputLen, maxTokens: l.maxTokens };
  });
}

export function kvStageBlocks(kvDtype: "fp32" | "fp16" | "int8" | "fp8"): number {
  return blocksForKvBudget(KV_STAGE_BUDGET_BYTES, {
    numLayers: KV_STAGE_LAYERS,
    numKvHeads: BENCH_SHAPE.numKvHeads,
    headDim: BENCH_SHAPE.headDim,
    blockSizeTokens: KV_BLOCK_SIZE_TOKENS,
    kvDtype,
  });
}

export function simulate(allocator: "paged" | "contiguous", numBlocks: number, requests: KvWasteRequest[]): KvWasteResult {
  return simulateKvWaste({
    allocator,
    totalTokens: numBlocks * KV_BLOCK_SIZE_TOKENS,
    blockSizeTokens: KV_BLOCK_SIZE_TOKENS,
    contextTokens: KV_LOAD.contextTokens,
    requests,
    warmupSteps: KV_WARMUP_STEPS,
  });
}

export const kvWaste: BenchPart = {
  name: "kv-waste",
  description: "KV memory reserved but unused at steady state: paged blocks vs contiguous max-length reservations (simulated, same pool)",
  async run(ctx) {
    const blocks = kvStageBlocks("fp32");
    const requests = kvRequests();
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    ctx.print(`${describeShape(BENCH_SHAPE)}; one stage of ${KV_STAGE_LAYERS} layers, fp32 KV, ${KV_STAGE_BUDGET_BYTES / 2 ** 20} MiB per worker`);
    ctx.print(`pool: ${blocks} blocks of ${KV_BLOCK_SIZE_TOKENS} = ${blocks * KV_BLOCK_SIZE_TOKENS} tokens (the worker's sizing); the contiguous range has the same size`);
    ctx.print(describeKvLoad());
    ctx.print(`drawn lengths: prompt mean ${fmt(mean(requests.map((r) => r.promptLen)))}, output mean ${fmt(mean(requests.map((r) => r.outputLen)))}`);

    const paged = simulate("paged", blocks, requests);
    const contiguous = simulate("contiguous", blocks, requests);
    const rows = [["allocator", "waste %", "used %", "reserved %", "free %", "running seqs", "preemptions", "steps measured"]];
    for (const [name, r] of [["paged", paged], ["contiguous", contiguous]] as const) {
      rows.push([name, fmt(r.wastePct), fmt(r.usedPct), fmt(r.reservedPct), fmt(r.freePct), fmt(r.meanAdmitted), String(r.preemptions), String(r.stepsMeasured)]);
    }
    for (const line of table(rows)) ctx.print(line);
    ctx.print(`paged waste is the partly filled last block of each sequence; contiguous adds each reservation's unused tail (goal: paged < 4%)`);
    ctx.print(`running sequences, paged / contiguous: ${fmt(paged.meanAdmitted / contiguous.meanAdmitted)}x`);
    return { kv_waste_paged_pct: paged.wastePct, kv_waste_contiguous_pct: contiguous.wastePct };
  },
};
