// One process running one stage's decode step over and over: `pnpm bench batching` runs it at the
// whole batch alone, at half the batch alone, and two at half the batch at once, to measure the
// ceiling on what pipelining can gain on this machine, every sequence `past` tokens in, the first
// `shared` of them (whole blocks) in blocks every sequence shares, as a cached system prompt is.
// The stage is layers [start, end) of the model, the LM head too where `end` is the last layer
// (greedy tokens fetched, as a greedy cluster's last stage does); any stage but the first takes a
// hidden state in.
// Args: modelDir start end batch past seconds [shared]. Prints {"steps_per_s": …} on its last line.
import { openModel } from "@strata/model";
import { StageEngine, type StageChunk } from "@strata/compute";

const [modelDir, startArg, endArg, batchArg, pastArg, secondsArg, sharedArg = "0"] = process.argv.slice(2);
const layerStart = Number(startArg);
const layerEnd = Number(endArg);
const batch = Number(batchArg);
const source = await openModel(modelDir);
const firstStage = layerStart === 0;
const lastStage = layerEnd === source.config.numLayers;
const weights = await source.loadStage({ layerStart, layerEnd, withEmbedding: firstStage, withHead: lastStage });
await source.close();
const BLOCK = 16;
const past = Number(pastArg);
const sharedBlocks = Math.floor(Number(sharedArg) / BLOCK);
const ownBlocks = Math.floor(past / BLOCK) + 1 - sharedBlocks;
const engine = await StageEngine.create(weights, { numBlocks: sharedBlocks + batch * ownBlocks, blockSizeTokens: BLOCK, firstStage, lastStage });
const chunks: StageChunk[] = Array.from({ length: batch }, (_, b) => ({
  seqId: b + 1,
  startPosition: past,
  numTokens: 1,
  tokenIds: [5],
  blockTable: [...Array.from({ length: sharedBlocks }, (_, i) => i), ...Array.from({ length: ownBlocks }, (_, i) => sharedBlocks + b * ownBlocks + i)],
}));
const hidden = firstStage ? undefined : new Float32Array(batch * weights.config.hiddenSize).fill(0.01);
const step = () => engine.forward(chunks, hidden, { logits: false });
for (let i = 0; i < 3; i++) await step();
const started = performance.now();
const deadline = started + Number(secondsArg) * 1000;
let steps = 0;
while (performance.now() < deadline) {
  await step();
  steps++;
}
process.stdout.write(JSON.stringify({ steps_per_s: steps / ((performance.now() - started) / 1000) }) + "\n");
await engine.close();
