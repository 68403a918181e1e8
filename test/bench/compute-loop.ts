// One process running one stage's decode step over and over: `pnpm bench batching` runs it at the
// whole batch alone, at half the batch alone, and two at half the batch at once, to measure the
// ceiling on what pipelining can gain on this machine, every sequence `past` tokens in, the first
// `shared` of them (whole blocks) in blocks every sequence shares, as a cached system prompt is.
// Prints {"steps_per_s": …} on its last line.
import { openModel } from "@strata/model";
import { StageEngine, type StageChunk } from "@strata/compute";

const [modelDir, layersArg, batchArg, pastArg, secondsArg, sharedArg = "0"] = process.argv.slice(2);
const layers = Number(layersArg);
const batch = Number(batchArg);
const source = await openModel(modelDir);
const weights = await source.loadStage({ layerStart: 0, layerEnd: layers, withEmbedding: true, withHead: false });
await source.close();
const BLOCK = 16;
const past = Number(pastArg);
const sharedBlocks = Math.floor(Number(sharedArg) / BLOCK);
const ownBlocks = Math.floor(past / BLOCK) + 1 - sharedBlocks;
const engine = await StageEngine.create(weights, { numBlocks: sharedBlocks + batch * ownBlocks, blockSizeTokens: BLOCK, firstStage: true, lastStage: false });
const chunks: StageChunk[] = Array.from({ length: batch }, (_, b) => ({
  seqId: b + 1,
  startPosition: past,
  numTokens: 1,
  tokenIds: [5],
  blockTable: [...Array.from({ length: sharedBlocks }, (_, i) => i), ...Array.from({ length: ownBlocks }, (_, i) => sharedBlocks + b * ownBlocks + i)],
}));
for (let i = 0; i < 3; i++) await engine.forward(chunks);
const started = performance.now();
const deadline = started + Number(secondsArg) * 1000;
let steps = 0;
while (performance.now() < deadline) {
  await engine.forward(chunks);
  steps++;
}
process.stdout.write(JSON.stringify({ steps_per_s: steps / ((performance.now() - started) / 1000) }) + "\n");
await engine.close();
