import { cpSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_HF_MODEL_DIR, loadLoraAdapter, readHfConfig, writeSyntheticLora, type ModelConfig } from "../src/index.ts";

// The PEFT LoRA loader: what it accepts, what it refuses with a clear reason, and that a stage
// reads only its own layers of the adapter file.

const tmp = mkdtempSync(join(tmpdir(), "strata-peft-"));
let config: ModelConfig;
const dir = join(tmp, "adapter");

beforeAll(async () => {
  config = await readHfConfig(BUNDLED_HF_MODEL_DIR);
  await writeSyntheticLora(dir, config, { rank: 4, alpha: 8, targetModules: ["wq", "wv", "wDown"], seed: 3 });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function withConfig(name: string, patch: Record<string, unknown>): string {
  const copy = join(tmp, name);
  rmSync(copy, { recursive: true, force: true });
  const original = JSON.parse(readFileSync(join(dir, "adapter_config.json"), "utf8")) as Record<string, unknown>;
  cpSync(dir, copy, { recursive: true });
  writeFileSync(join(copy, "adapter_config.json"), JSON.stringify({ ...original, ...patch }));
  return copy;
}

describe("loadLoraAdapter", () => {
  it("reads the targeted modules with alpha / r folded into B, and only the requested layers' bytes", async () => {
    const all = await loadLoraAdapter(dir, config, { layerStart: 0, layerEnd: config.numLayers });
    expect(all.rank).toBe(4);
    expect(all.scale).toBe(2);
    expect(all.targetModules.sort()).toEqual(["wDown", "wq", "wv"]);
    expect(all.layers).toHaveLength(config.numLayers);
    expect(Object.keys(all.layers[0]).sort()).toEqual(["wDown", "wq", "wv"]);
    expect(all.layers[0].wq!.a).toHaveLength(4 * config.hiddenSize);
    expect(all.layers[0].wq!.b).toHaveLength(config.numHeads * config.headDim * 4);

    const one = await loadLoraAdapter(dir, config, { layerStart: 2, layerEnd: 3 });
    expect(one.layers).toHaveLength(1);
    expect(one.layers[0].wv!.a).toEqual(all.layers[2].wv!.a);
    // Both read the same header; the rest is exactly the layers' A and B matrices (f32).
    const { hiddenSize: D, intermediateSize: F, numHeads: H, numKvHeads: KV, headDim: hd } = config;
    const layerBytes = 4 * 4 * (D + H * hd + D + KV * hd + F + D);
    expect(all.bytesRead - one.bytesRead).toBe((config.numLayers - 1) * layerBytes);
    expect(one.bytesRead).toBeLessThan(statSync(join(dir, "adapter_model.safetensors")).size - 3 * layerBytes);
  });

  it("refuses what it cannot serve, saying why", async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ r: 0 }, /r must be a positive integer/],
      [{ peft_type: "IA3" }, /peft_type "IA3" is not supported/],
      [{ target_modules: ["q_proj", "lm_head"] }, /target module "lm_head" is not supported/],
      [{ use_dora: true }, /DoRA/],
      [{ bias: "all" }, /bias "all" is not supported/],
      [{ rank_pattern: { q_proj: 8 } }, /per-module ranks/],
      [{ target_modules: ["q_proj", "k_proj"] }, /missing tensor .*k_proj\.lora_A/],
      [{ r: 8 }, /has shape \[4, 64\], the base model needs \[8, 64\]/],
    ];
    for (const [i, [patch, message]] of cases.entries()) {
      await expect(loadLoraAdapter(withConfig(`bad-${i}`, patch), config, { layerStart: 0, layerEnd: 1 })).rejects.toThrow(message);
    }
    await expect(loadLoraAdapter(join(tmp, "missing"), config, { layerStart: 0, layerEnd: 1 })).rejects.toThrow(/adapter_config\.json/);
    await expect(loadLoraAdapter(dir, config, { layerStart: 0, layerEnd: 9 })).rejects.toThrow(/layer range/);
  });
});
