import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { ByteReader } from "./byte-reader.ts";
import type { ModelConfig } from "./config.ts";
import { DTYPE_BYTES, decodeToF32, encodeFromF32, isDType } from "./dtype.ts";
import { ModelFormatError } from "./errors.ts";
import { HF_LAYER_NAMES } from "./hf.ts";
import { readSafetensorsHeader, writeSafetensors, type TensorToWrite } from "./safetensors.ts";
import { mulberry32, normals } from "./synthetic.ts";
import { checkLayerRange, layerTensorShape, type LayerWeights, type StageWeights } from "./weights.ts";

/** The layer matrices a LoRA adapter may target. */
export const LORA_MODULES = ["wq", "wk", "wv", "wo", "wGate", "wUp", "wDown"] as const satisfies readonly (keyof LayerWeights)[];
export type LoraModule = (typeof LORA_MODULES)[number];

/** One module's low-rank update W + B·A: a [rank, in], b [out, rank] with the adapter's scale folded in. */
export interface LoraPair {
  a: Float32Array;
  b: Float32Array;
}

/**
 * A PEFT LoRA adapter's matrices for a layer range. Rows of B for q_proj and k_proj follow the
 * Hugging Face (rotate-half) head layout, like HF base weights.
 */
export interface LoraAdapter {
  rank: number;
  /** alpha / rank (alpha / sqrt(rank) with rsLoRA), already folded into every B. */
  scale: number;
  targetModules: LoraModule[];
  layerStart: number;
  layerEnd: number;
  /** layers[i] is layer layerStart + i; a module the adapter does not target is absent. */
  layers: Partial<Record<LoraModule, LoraPair>>[];
  bytesRead: number;
}

const PEFT_TARGETS: Record<string, LoraModule> = Object.fromEntries(
  LORA_MODULES.map((m) => [HF_LAYER_NAMES[m].split(".").pop()!, m]),
) as Record<string, LoraModule>;

interface AdapterConfig {
  rank: number;
  scale: number;
  targetModules: LoraModule[];
}

function parseAdapterConfig(raw: unknown, path: string): AdapterConfig {
  const fail = (what: string) => new ModelFormatError(`${path}: ${what}`);
  if (typeof raw !== "object" || raw === null) throw fail("not a JSON object");
  const c = raw as Record<string, unknown>;
  if (c.peft_type !== undefined && c.peft_type !== "LORA") throw fail(`peft_type ${JSON.stringify(c.peft_type)} is not supported (only LORA)`);
  const rank = c.r;
  if (typeof rank !== "number" || !Number.isInteger(rank) || rank < 1) throw fail(`r must be a positive integer, got ${JSON.stringify(rank)}`);
  const alpha = c.lora_alpha ?? rank;
  if (typeof alpha !== "number" || !Number.isFinite(alpha)) throw fail(`lora_alpha must be a number, got ${JSON.stringify(alpha)}`);
  if (c.fan_in_fan_out === true) throw fail("fan_in_fan_out adapters are not supported");
  if (c.bias !== undefined && c.bias !== "none") throw fail(`bias ${JSON.stringify(c.bias)} is not supported (only "none")`);
  if (c.use_dora === true) throw fail("DoRA adapters are not supported");
  for (const key of ["rank_pattern", "alpha_pattern"]) {
    if (c[key] && typeof c[key] === "object" && Object.keys(c[key] as object).length > 0) throw fail(`${key} (per-module ranks) is not supported`);
  }
  if (c.layers_to_transform !== undefined && c.layers_to_transform !== null) throw fail("layers_to_transform is not supported");
  const targets = c.target_modules;
  if (!Array.isArray(targets) || targets.length === 0) throw fail("target_modules must be a non-empty list of module names");
  const targetModules = targets.map((t) => {
    const m = typeof t === "string" ? PEFT_TARGETS[t] : undefined;
    if (!m) throw fail(`target module ${JSON.stringify(t)} is not supported (supported: ${Object.keys(PEFT_TARGETS).join(", ")})`);
    return m;
  });
  const scale = c.use_rslora === true ? alpha / Math.sqrt(rank) : alpha / rank;
  return { rank, scale, targetModules: [...new Set(targetModules)] };
}

function peftName(layer: number, module: LoraModule, which: "A" | "B"): string {
  return `base_model.model.model.layers.${layer}.${HF_LAYER_NAMES[module]}.lora_${which}.weight`;
}

/**
 * Reads a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) for layers
 * [layerStart, layerEnd) of a base model: byte ranges of those layers only, checked against the
 * base's shapes.
 */
export async function loadLoraAdapter(dir: string, base: ModelConfig, range: { layerStart: number; layerEnd: number }): Promise<LoraAdapter> {
  checkLayerRange(base, range.layerStart, range.layerEnd);
  const configPath = join(dir, "adapter_config.json");
  let rawConfig: unknown;
  try {
    rawConfig = JSON.parse(await readFile(configPath, "utf8"));
  } catch (error) {
    throw new ModelFormatError(`${configPath}: cannot read a LoRA adapter config (${(error as Error).message})`);
  }
  const { rank, scale, targetModules } = parseAdapterConfig(rawConfig, configPath);
  const path = join(dir, "adapter_model.safetensors");
  const reader = new ByteReader();
  try {
    let header;
    try {
      header = await readSafetensorsHeader(reader, path);
    } catch (error) {
      throw error instanceof ModelFormatError ? error : new ModelFormatError(`${path}: cannot read (${(error as Error).message})`);
    }
    const read = async (name: string, shape: [number, number]): Promise<Float32Array> => {
      const entry = header.tensors.get(name);
      if (!entry) throw new ModelFormatError(`${path}: missing tensor ${name}`);
      if (!isDType(entry.dtype)) throw new ModelFormatError(`${path}: ${name} has dtype ${entry.dtype}; supported: F32, F16, BF16`);
      if (entry.shape.length !== 2 || entry.shape[0] !== shape[0] || entry.shape[1] !== shape[1]) {
        throw new ModelFormatError(`${path}: ${name} has shape [${entry.shape.join(", ")}], the base model needs [${shape.join(", ")}]`);
      }
      const bytes = new Uint8Array(shape[0] * shape[1] * DTYPE_BYTES[entry.dtype]);
      await reader.read(path, entry.offset, bytes);
      return decodeToF32(bytes, entry.dtype);
    };
    const layers: Partial<Record<LoraModule, LoraPair>>[] = [];
    for (let l = range.layerStart; l < range.layerEnd; l++) {
      const layer: Partial<Record<LoraModule, LoraPair>> = {};
      for (const m of targetModules) {
        const [out, inDim] = layerTensorShape(base, m);
        const a = await read(peftName(l, m, "A"), [rank, inDim]);
        const b = (await read(peftName(l, m, "B"), [out, rank])).map((x) => x * scale);
        layer[m] = { a, b };
      }
      layers.push(layer);
    }
    return { rank, scale, targetModules, layerStart: range.layerStart, layerEnd: range.layerEnd, layers, bytesRead: reader.bytesRead };
  } finally {
    await reader.close();
  }
}

/**
 * W + B·A for every targeted module: the obviously-correct definition the served path is tested
 * against. The weights must be in the rotate-half layout the adapter's q/k rows use.
 */
export function mergeLora(weights: StageWeights, adapter: LoraAdapter): StageWeights {
  if (weights.config.ropeStyle !== "rotate-half") throw new Error("mergeLora needs rotate-half weights (toRotateHalfLayout)");
  if (adapter.layerStart !== weights.layerStart || adapter.layerEnd !== weights.layerEnd) {
    throw new Error(`adapter covers layers [${adapter.layerStart}, ${adapter.layerEnd}), the weights [${weights.layerStart}, ${weights.layerEnd})`);
  }
  const layers = weights.layers.map((layer, i) => {
    const merged: LayerWeights = { ...layer };
    for (const m of adapter.targetModules) {
      const { a, b } = adapter.layers[i][m]!;
      const [out, inDim] = layerTensorShape(weights.config, m);
      const w = Float32Array.from(layer[m]);
      for (let o = 0; o < out; o++) {
        for (let k = 0; k < adapter.rank; k++) {
          const bok = b[o * adapter.rank + k];
          for (let c = 0; c < inDim; c++) w[o * inDim + c] += bok * a[k * inDim + c];
        }
      }
      merged[m] = w;
    }
    return merged;
  });
  return { ...weights, layers };
}

/** Writes a PEFT LoRA folder with seeded random A and B for a base model (tests and bench). */
export async function writeSyntheticLora(
  dir: string,
  base: ModelConfig,
  opts: { rank: number; alpha?: number; targetModules?: LoraModule[]; seed: number; std?: number },
): Promise<void> {
  const targets = opts.targetModules ?? [...LORA_MODULES];
  const hfTargets = Object.entries(PEFT_TARGETS).filter(([, m]) => targets.includes(m)).map(([name]) => name);
  const rand = mulberry32(opts.seed);
  const std = opts.std ?? 0.5;
  const tensors: TensorToWrite[] = [];
  for (let l = 0; l < base.numLayers; l++) {
    for (const m of targets) {
      const [out, inDim] = layerTensorShape(base, m);
      for (const [which, shape] of [["A", [opts.rank, inDim]], ["B", [out, opts.rank]]] as const) {
        const values = normals(rand, shape[0] * shape[1], 0, std / Math.sqrt(shape[1]));
        tensors.push({ name: peftName(l, m, which), dtype: "F32", shape: [...shape], data: () => encodeFromF32(values, "F32") });
      }
    }
  }
  await mkdir(dir, { recursive: true });
  const config = { peft_type: "LORA", r: opts.rank, lora_alpha: opts.alpha ?? opts.rank, target_modules: hfTargets, bias: "none", fan_in_fan_out: false, task_type: "CAUSAL_LM" };
  await writeFile(join(dir, "adapter_config.json"), JSON.stringify(config, null, 2) + "\n");
  await writeSafetensors(join(dir, "adapter_model.safetensors"), tensors, { format: "pt" });
}
