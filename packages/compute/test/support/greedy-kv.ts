// The bundled model's greedy.json run straight through one StageEngine that holds every layer, so a
// KV dtype's effect on the output is seen without any cluster around it. Shared by the KV dtype
// test and the kv-dtype bench part.
import { readFileSync } from "node:fs";
import type { KvDtype } from "@strata/kv";
import { argmax, BUNDLED_MODEL_DIR, openModel, type StageWeights } from "@strata/model";
import { StageEngine, type AttentionForm } from "../../src/index.ts";

export interface GreedyOracle {
  prompt_token_ids: number[];
  token_ids: number[];
  steps: number;
}

export function loadGreedyOracle(dir = BUNDLED_MODEL_DIR): GreedyOracle {
  return JSON.parse(readFileSync(`${dir}/greedy.json`, "utf8")) as GreedyOracle;
}

export async function loadWholeModel(dir = BUNDLED_MODEL_DIR): Promise<StageWeights> {
  const source = await openModel(dir);
  try {
    return await source.loadStage({ layerStart: 0, layerEnd: source.config.numLayers, withEmbedding: true, withHead: true });
  } finally {
    await source.close();
  }
}

export interface GreedyRun {
  /** Prompt + each step's argmax, comparable with greedy.json's token_ids. */
  tokenIds: number[];
  /** The logits of each forward pass (prefill first, then one per decode step). */
  logits: Float32Array[];
}

/**
 * One prefill chunk for the prompt, then one-token decode chunks until `oracle.steps` positions
 * have run, block table [0, 1, 2, ...]. `feed: "own"` decodes greedily (each step's input is the
 * previous step's argmax); `feed: "oracle"` feeds greedy.json's tokens instead, so every step's
 * logits stay comparable with another run's even where an argmax differs. The two are the same
 * run for as long as the argmaxes agree with greedy.json.
 */
export async function runGreedyOracle(
  weights: StageWeights,
  kvDtype: KvDtype,
  oracle: GreedyOracle,
  feed: "own" | "oracle",
  blockSizeTokens = 16,
  attention?: AttentionForm,
): Promise<GreedyRun> {
  const numBlocks = Math.ceil(oracle.steps / blockSizeTokens);
  const engine = await StageEngine.create(weights, { numBlocks, blockSizeTokens, firstStage: true, lastStage: true, kvDtype, attention });
  const blockTable = Array.from({ length: numBlocks }, (_, i) => i);
  const tokenIds = [...oracle.prompt_token_ids];
  const input = (position: number): number => (feed === "own" ? tokenIds : oracle.token_ids)[position];
  const logits: Float32Array[] = [];
  let chunk = { seqId: 0, startPosition: 0, numTokens: tokenIds.length, tokenIds: tokenIds.slice(), blockTable };
  for (;;) {
    const out = await engine.forward([chunk]);
    logits.push(out.logits!.slice());
    tokenIds.push(argmax(out.logits!));
    const position = chunk.startPosition + chunk.numTokens;
    if (position >= oracle.steps) return { tokenIds, logits };
    chunk = { seqId: 0, startPosition: position, numTokens: 1, tokenIds: [input(position)], blockTable };
  }
}

/** Largest |logit - reference logit| over every step of two runs fed the same tokens. */
export function maxAbsLogitError(run: GreedyRun, reference: GreedyRun): number {
  let worst = 0;
  run.logits.forEach((l, i) => {
    const ref = reference.logits[i];
    for (let j = 0; j < l.length; j++) worst = Math.max(worst, Math.abs(l[j] - ref[j]));
  });
  return worst;
}
