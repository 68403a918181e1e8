import { LocalCluster } from "@strata/coordinator";
import { BUNDLED_MODEL_DIR } from "@strata/model";
const workers = Number(process.argv[2] ?? 1);
const c = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers });
for (let i = 0; i < 3; i++) {
  const t = performance.now();
  const r = await c.engine.generate({ promptIds: [1], maxTokens: 256, sampling: { temperature: 0, topP: 1, topK: 0 }, stopTokenIds: [] });
  console.log(workers, (r.tokenIds.length / (performance.now() - t) * 1000).toFixed(0), "tok/s");
  await c.waitForBlocksFreed();
}
await c.stop();
