import { performance } from "node:perf_hooks";
import { StageEngine } from "@strata/compute";
import { kvBytesPerBlock, type KvDtype } from "@strata/kv";
import { BUNDLED_MODEL_DIR, openModel, type StageWeights } from "@strata/model";
import { loadGreedyOracle, loadWholeModel, maxAbsLogitError, runGreedyOracle } from "../../packages/compute/test/support/greedy-kv.ts";
import { describeModel, fmt, median, table, type BenchPart } from "./support.ts";
import { BENCH_SHAPE, describeShape, syntheticModelDir } from "./synthetic.ts";
import { KV_BLOCK_SIZE_TOKENS, KV_STAGE_BUDGET_BYTES, KV_STAGE_LAYERS, describeKvLoad, kvRequests, kvStageBlocks, simulate } from "./kv-waste.ts";

const DTYPES: KvDtype[] = ["fp32", "fp16", "int8", "fp8"];

/**
 * Median ms of one decode step of the first stage (layers 0-4) of the bench model for `seqs`
 * sequences with `pastTokens` each: gather (the past decoded to float32 once, in the warm-up, then
 * only new positions), graph and scatter.
 */
async function decodeStepMs(weights: StageWeights, kvDtype: KvDtype, seqs: number, pastTokens: number): Promise<number> {
  const bs = KV_BLOCK_SIZE_TOKENS;
  const blocksPerSeq = Math.ceil((pastTokens + 1) / bs);
  const engine = await StageEngine.create(weights, { numBlocks: seqs * blocksPerSeq, blockSizeTokens: bs, firstStage: true, lastStage: false, kvDtype });
  const tables = Array.from({ length: seqs }, (_, s) => Array.from({ length: blocksPerSeq }, (_, i) => s * blocksPerSeq + i));
  // Past K/V of plausible magnitude, written through the store as a prefill would.
  const row = BENCH_SHAPE.numKvHeads * BENCH_SHAPE.headDim;
  const values = new Float32Array(2 * KV_STAGE_LAYERS * seqs * pastTokens * row);
  for (let i = 0; i < values.length; i++) values[i] = Math.sin(i) * 4;
  engine.kv.scatter(tables.map((blockTable) => ({ startPosition: 0, numTokens: pastTokens, blockTable })), pastTokens, values);
  const step = tables.map((blockTable, s) => ({ seqId: s, startPosition: pastTokens, numTokens: 1, tokenIds: [5], blockTable }));
  const samples: number[] = [];
  for (let i = 0; i < 7; i++) {
    const started = performance.now();
    await engine.forward(step);
    if (i >= 2) samples.push(performance.now() - started);
  }
  return median(samples);
}

export const kvDtype: BenchPart = {
  name: "kv-dtype",
  description: "quantized KV: sequences admitted under one KV byte budget (int8 vs fp32), logit error on the bundled model's greedy.json",
  async run(ctx) {
    ctx.print(`${describeShape(BENCH_SHAPE)}; one stage of ${KV_STAGE_LAYERS} layers, ${KV_STAGE_BUDGET_BYTES / 2 ** 20} MiB of KV per worker, blocks of ${KV_BLOCK_SIZE_TOKENS}`);
    ctx.print(`${describeKvLoad()}; paged allocator, admitted = time-averaged running sequences`);
    const requests = kvRequests();
    const admitted: Partial<Record<KvDtype, number>> = {};
    const rows = [["kv dtype", "bytes/block", "blocks", "running seqs", "vs fp32"]];
    for (const dtype of DTYPES) {
      const blocks = kvStageBlocks(dtype);
      admitted[dtype] = simulate("paged", blocks, requests).meanAdmitted;
      const bytes = kvBytesPerBlock({ numLayers: KV_STAGE_LAYERS, numKvHeads: BENCH_SHAPE.numKvHeads, headDim: BENCH_SHAPE.headDim, blockSizeTokens: KV_BLOCK_SIZE_TOKENS, kvDtype: dtype });
      rows.push([dtype, String(bytes), String(blocks), fmt(admitted[dtype]!), `${fmt(admitted[dtype]! / admitted.fp32!)}x`]);
    }
    for (const line of table(rows)) ctx.print(line);

    const seqs = 32;
    const past = 512;
    const source = await openModel(await syntheticModelDir());
    const stage = await source.loadStage({ layerStart: 0, layerEnd: KV_STAGE_LAYERS, withEmbedding: true, withHead: false });
    await source.close();
    ctx.print(
      `one decode step of stage [0,${KV_STAGE_LAYERS}) of that model, ${seqs} sequences x ${past} past tokens, 1 onnxruntime thread ` +
        `(median of 5 after 2 warm-ups; the past is decoded to float32 once and kept, attention is float32 whatever the storage):`,
    );
    const stepMs: Partial<Record<KvDtype, number>> = {};
    for (const dtype of DTYPES) stepMs[dtype] = await decodeStepMs(stage, dtype, seqs, past);
    for (const line of table([["kv dtype", "ms", "vs fp32"], ...DTYPES.map((d) => [d, fmt(stepMs[d]!), `${fmt(stepMs[d]! / stepMs.fp32!)}x`])])) ctx.print(line);

    const weights = await loadWholeModel();
    const oracle = loadGreedyOracle();
    ctx.print(describeModel(BUNDLED_MODEL_DIR, weights.config));
    ctx.print(
      `greedy.json (${oracle.steps} positions, prompt ${oracle.prompt_token_ids.length} tokens) through one StageEngine of all layers; ` +
        `logit error vs fp32 KV with greedy.json's tokens fed to both; "identical" = free-running greedy reproduces greedy.json`,
    );
    const fp32 = await runGreedyOracle(weights, "fp32", oracle, "oracle");
    const err: Partial<Record<KvDtype, number>> = {};
    const quality = [["kv dtype", "max abs logit err", "greedy identical"]];
    for (const dtype of DTYPES.slice(1)) {
      err[dtype] = maxAbsLogitError(await runGreedyOracle(weights, dtype, oracle, "oracle"), fp32);
      const free = await runGreedyOracle(weights, dtype, oracle, "own");
      const firstDiff = free.tokenIds.findIndex((t, i) => t !== oracle.token_ids[i]);
      quality.push([dtype, fmt(err[dtype]!), firstDiff < 0 ? "yes" : `no (from token ${firstDiff})`]);
    }
    for (const line of table(quality)) ctx.print(line);

    return {
      int8_admitted_vs_fp32: admitted.int8! / admitted.fp32!,
      int8_max_abs_logit_err: err.int8!,
      fp8_max_abs_logit_err: err.fp8!,
    };
  },
};
