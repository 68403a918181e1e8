import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { performance } from "node:perf_hooks";
import { LocalCluster, type ClusterOptions } from "@strata/coordinator";
import type { ModelConfig } from "@strata/model";
import type { Partition } from "@strata/planner";

export interface BenchContext {
  /** One nats-server shared by every cluster in the run (started once by index.ts). */
  natsUrl: string;
  /** Human-readable output. It goes to stdout, so --json's object must stay the last line. */
  print(line?: string): void;
}

export interface BenchPart {
  /** Used on the command line (`pnpm bench <name>`). */
  name: string;
  description: string;
  /** Returns every figure it measured, keyed as they appear in --json (flat, snake_case, unique across parts). */
  run(ctx: BenchContext): Promise<Record<string, number>>;
}

/**
 * Starts a cluster of worker processes (not in-process servers, so each stage has its own event loop
 * as in production), runs `fn`, and always tears it down so the next measurement starts on an idle machine.
 */
export async function withCluster<T>(
  ctx: BenchContext,
  opts: Omit<ClusterOptions, "natsUrl" | "inProcessWorkers">,
  fn: (cluster: LocalCluster) => Promise<T>,
): Promise<T> {
  const cluster = await LocalCluster.start({ ...opts, natsUrl: ctx.natsUrl, log: (line) => process.stderr.write(`${line}\n`) });
  try {
    return await fn(cluster);
  } finally {
    await cluster.stop();
  }
}

/**
 * CPU seconds a hypervisor has taken from this machine's cores so far (the steal column of
 * /proc/stat, in USER_HZ = 100 ticks a second); 0 where there is no /proc/stat. A shared host's
 * steal slows whichever round it falls in, so a ratio of rounds is read beside it.
 */
export function hostStealSeconds(): number {
  try {
    const cpu = readFileSync("/proc/stat", "utf8").split("\n", 1)[0].trim().split(/\s+/);
    return Number(cpu[8] ?? 0) / 100;
  } catch {
    return 0;
  }
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/**
 * Untimed rounds before a cluster's timed ones. Throughput on a fresh cluster climbs for the first
 * ~1,000 decode steps (V8 tiers up the per-step code paths; onnxruntime plans each new input
 * shape once): measured here, 1-worker single-stream went 816, 965, 1,250, then ~1,000-1,350
 * tok/s over consecutive 256-token runs, 2 workers 303, 328, 427, then ~450-600. A serving
 * system runs in that steady state, so that is what the figures measure.
 */
export const WARMUP_ROUNDS = 4;

export interface RateResult {
  /** Median of the per-run rates (units / s). */
  median: number;
  samples: number[];
}

/**
 * Runs `fn` `warmups` times untimed, then `runs` times timed; `fn` returns how many units it produced.
 * `between` runs untimed after every run (e.g. wait for KV to be freed) so runs don't overlap.
 */
export async function medianRate(
  opts: { warmups: number; runs: number; between?: () => Promise<unknown> },
  fn: () => Promise<number>,
): Promise<RateResult> {
  const samples: number[] = [];
  for (let i = 0; i < opts.warmups + opts.runs; i++) {
    const start = performance.now();
    const units = await fn();
    const seconds = (performance.now() - start) / 1000;
    if (i >= opts.warmups) samples.push(units / seconds);
    await opts.between?.();
  }
  return { median: median(samples), samples };
}

/** "bundled stories260K: dim 64, 5 layers, 8 heads, 4 KV heads, vocab 512" */
export function describeModel(modelDir: string, config: ModelConfig, label = "bundled"): string {
  return (
    `${label} ${basename(modelDir)}: dim ${config.hiddenSize}, ${config.numLayers} layers, ${config.numHeads} heads, ` +
    `${config.numKvHeads} KV heads, vocab ${config.vocabSize}`
  );
}

export function describePartition(partition: Partition): string {
  return partition.map(([a, b]) => `[${a},${b})`).join(" ");
}

/** Four significant digits: the noise on a shared 2-core machine is far larger than that. */
export function round(value: number): number {
  return Number(value.toPrecision(4));
}

export function fmt(value: number): string {
  return round(value).toLocaleString("en-US", { maximumFractionDigits: 3 });
}

/** Left-aligns text columns and right-aligns numeric-looking ones. */
export function table(rows: string[][], indent = "  "): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => (r[c] ?? "").length)));
  return rows.map(
    (r) =>
      indent +
      r
        .map((cell, c) => (/^[\d.,]+[x×]?$/.test(cell) ? cell.padStart(widths[c]) : cell.padEnd(widths[c])))
        .join("  ")
        .trimEnd(),
  );
}
