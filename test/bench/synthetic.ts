import { existsSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeSyntheticModel, type SyntheticShape } from "@strata/model";

/** A model big enough that compute dominates: the shape the scheduler's figures are stated on. */
export const BENCH_SHAPE: SyntheticShape = {
  hiddenSize: 512,
  intermediateSize: 1408,
  numLayers: 8,
  numHeads: 8,
  numKvHeads: 4,
  headDim: 64,
  vocabSize: 32000,
  maxPositionEmbeddings: 2048,
  tieWordEmbeddings: true,
};

export function describeShape(shape: SyntheticShape): string {
  return (
    `synthetic Llama: hidden ${shape.hiddenSize}, ${shape.numLayers} layers, ${shape.numHeads} heads, ` +
    `${shape.numKvHeads} KV heads, head dim ${shape.headDim}, MLP ${shape.intermediateSize}, vocab ${shape.vocabSize}, f32`
  );
}

/** Written once per machine (seeded, so every run measures the same weights), with a tokenizer so the HTTP API serves it. */
export async function syntheticModelDir(shape: SyntheticShape = BENCH_SHAPE, seed = 1): Promise<string> {
  const dir = join(tmpdir(), `strata-bench-${shape.hiddenSize}x${shape.numLayers}-v${shape.vocabSize}-s${seed}`);
  if (!["config.json", "tokenizer.json", "model.safetensors"].every((f) => existsSync(join(dir, f)))) {
    mkdirSync(dir, { recursive: true });
    await writeSyntheticModel(dir, shape, seed);
  }
  return dir;
}
