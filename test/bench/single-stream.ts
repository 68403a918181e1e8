import { BUNDLED_MODEL_DIR, openModel } from "@strata/model";
import { GREEDY } from "@strata/sampling";
import { describeModel, describePartition, fmt, medianRate, round, table, withCluster, WARMUP_ROUNDS, type BenchPart } from "./support.ts";

const WORKER_COUNTS = [1, 2, 3];
const MAX_TOKENS = 256;
// One stream climbs longer than a busy cluster: every per-step path (gRPC, protobuf, the stage's
// own bookkeeping) tiers up as it runs. Measured here over 2 workers, in blocks of five 256-token
// rounds: ~1,300 tok/s over rounds 1-5, ~2,200 over 11-15, ~2,400 over 16-30 and ~2,600 from the
// 31st on (stage compute per step ~150 -> ~90 us, each hop ~200 -> ~90 us). So each cluster runs
// thirty rounds (7,680 steps) first.
const WARMUPS = Math.max(WARMUP_ROUNDS, 30);
const RUNS = 5;

// Measured on this machine kind with the same stories260K checkpoint; not re-run here (no llama.cpp in the repo).
const LLAMACPP_1_THREAD_TOK_S = 6137;
const LLAMACPP_RPC_2_WORKERS_TOK_S = 1272;

export const singleStream: BenchPart = {
  name: "single-stream",
  description: "single-stream greedy decode tokens/s with 1, 2 and 3 worker processes",
  async run(ctx) {
    const source = await openModel(BUNDLED_MODEL_DIR);
    const config = source.config;
    await source.close();
    ctx.print(describeModel(BUNDLED_MODEL_DIR, config));
    ctx.print(
      `1 stream, prompt BOS, ${MAX_TOKENS} new tokens, greedy, no stop tokens, ${RUNS} runs after ${WARMUPS} warm-up runs; ` +
        `worker processes with 1 onnxruntime thread each, default layer split (balanced for the default planned load); tok/s = new tokens / wall time of generate()`,
    );

    const tokS: Record<number, number> = {};
    const rows = [["workers", "partition", "tok/s (median)", "runs"]];
    for (const workers of WORKER_COUNTS) {
      // One cluster at a time: the previous one is fully stopped before the next starts.
      await withCluster(ctx, { modelDir: BUNDLED_MODEL_DIR, workers }, async (cluster) => {
        const rate = await medianRate(
          // Eviction travels over NATS; let it finish so it doesn't bleed into the next timed run.
          { warmups: WARMUPS, runs: RUNS, between: () => cluster.waitForBlocksFreed() },
          async () => {
            // BOS only and no stop tokens: every run decodes exactly MAX_TOKENS tokens.
            const result = await cluster.engine.generate({ promptIds: [config.bosTokenId], maxTokens: MAX_TOKENS, sampling: GREEDY, stopTokenIds: [] });
            if (result.tokenIds.length !== MAX_TOKENS) throw new Error(`expected ${MAX_TOKENS} tokens, got ${result.tokenIds.length}`);
            return result.tokenIds.length;
          },
        );
        tokS[workers] = rate.median;
        rows.push([String(workers), describePartition(cluster.partition), fmt(rate.median), rate.samples.map(fmt).join(" ")]);
      });
    }
    for (const line of table(rows)) ctx.print(line);

    const figures = {
      single_stream_1w_tok_s: tokS[1],
      single_stream_2w_tok_s: tokS[2],
      single_stream_3w_tok_s: tokS[3],
      single_stream_2w_vs_1w: tokS[2] / tokS[1],
      single_stream_3w_vs_1w: tokS[3] / tokS[1],
      single_stream_1w_vs_llamacpp_1t: tokS[1] / LLAMACPP_1_THREAD_TOK_S,
      single_stream_2w_vs_llamacpp_rpc: tokS[2] / LLAMACPP_RPC_2_WORKERS_TOK_S,
    };
    ctx.print("ratios, measured side by side in this run:");
    for (const line of table([
      ["2 workers / 1 worker", `${fmt(figures.single_stream_2w_vs_1w)}x`],
      ["3 workers / 1 worker", `${fmt(figures.single_stream_3w_vs_1w)}x`],
    ])) ctx.print(line);
    ctx.print("anchors, llama.cpp on this machine kind with the same model (constants, not measured in this run):");
    for (const line of table([
      ["llama.cpp, 1 thread", `${fmt(LLAMACPP_1_THREAD_TOK_S)} tok/s`, "ours 1 worker / it", `${fmt(figures.single_stream_1w_vs_llamacpp_1t)}x`],
      ["llama.cpp RPC, 2 local workers", `${fmt(LLAMACPP_RPC_2_WORKERS_TOK_S)} tok/s`, "ours 2 workers / it", `${fmt(figures.single_stream_2w_vs_llamacpp_rpc)}x`],
    ])) ctx.print(line);
    return Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, round(v)]));
  },
};
