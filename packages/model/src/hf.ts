import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { ByteReader } from "./byte-reader.ts";
import { parseHfConfig, type ModelConfig } from "./config.ts";
import { isDType } from "./dtype.ts";
import { ModelFormatError } from "./errors.ts";
import { readSafetensorsHeader, type SafetensorsEntry } from "./safetensors.ts";
import { LocatedModelSource, type TensorKey, type TensorLocation } from "./tensor-source.ts";
import { LAYER_TENSORS, layerTensorShape, type LayerTensor } from "./weights.ts";

export const HF_LAYER_NAMES: Record<LayerTensor, string> = {
  attnNorm: "input_layernorm",
  wq: "self_attn.q_proj",
  wk: "self_attn.k_proj",
  wv: "self_attn.v_proj",
  wo: "self_attn.o_proj",
  ffnNorm: "post_attention_layernorm",
  wGate: "mlp.gate_proj",
  wUp: "mlp.up_proj",
  wDown: "mlp.down_proj",
};

/** The safetensors name of a stage tensor in a Llama-family checkpoint. */
export function hfTensorName(key: TensorKey): string {
  if (key === "embedding") return "model.embed_tokens.weight";
  if (key === "finalNorm") return "model.norm.weight";
  if (key === "lmHead") return "lm_head.weight";
  return `model.layers.${key.layer}.${HF_LAYER_NAMES[key.tensor]}.weight`;
}

/** Expected shape of each tensor; norms are 1-D. */
export function hfTensorShape(c: ModelConfig, key: TensorKey): number[] {
  if (key === "embedding" || key === "lmHead") return [c.vocabSize, c.hiddenSize];
  if (key === "finalNorm") return [c.hiddenSize];
  const [rows, cols] = layerTensorShape(c, key.tensor);
  return rows === 1 ? [cols] : [rows, cols];
}

async function readJson(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new ModelFormatError(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new ModelFormatError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

export async function readHfConfig(dir: string): Promise<ModelConfig> {
  const genPath = join(dir, "generation_config.json");
  const gen = existsSync(genPath) ? await readJson(genPath) : undefined;
  return parseHfConfig(await readJson(join(dir, "config.json")), gen);
}

/** Shard file of every tensor name: one model.safetensors, or the index's weight_map. */
async function weightFiles(dir: string): Promise<(name: string) => string | undefined> {
  const single = join(dir, "model.safetensors");
  const indexPath = join(dir, "model.safetensors.index.json");
  if (existsSync(indexPath)) {
    const index = (await readJson(indexPath)) as { weight_map?: unknown };
    const map = index.weight_map;
    if (typeof map !== "object" || map === null || !Object.values(map).every((v) => typeof v === "string")) {
      throw new ModelFormatError(`${indexPath}: "weight_map" must map tensor names to shard file names`);
    }
    const files = map as Record<string, string>;
    return (name) => (Object.hasOwn(files, name) ? join(dir, files[name]) : undefined);
  }
  if (existsSync(single)) return () => single;
  throw new ModelFormatError(`${dir}: no model.safetensors or model.safetensors.index.json`);
}

export async function openHf(dir: string): Promise<LocatedModelSource> {
  const config = await readHfConfig(dir);
  const fileOf = await weightFiles(dir);
  const reader = new ByteReader();
  try {
    const headers = new Map<string, Map<string, SafetensorsEntry>>();
    const entry = async (name: string): Promise<SafetensorsEntry | undefined> => {
      const path = fileOf(name);
      if (path === undefined) return undefined;
      let tensors = headers.get(path);
      if (!tensors) {
        if (!existsSync(path)) throw new ModelFormatError(`${path}: shard file is missing`);
        tensors = (await readSafetensorsHeader(reader, path)).tensors;
        headers.set(path, tensors);
      }
      return tensors.get(name);
    };

    // Check every tensor up front (headers only) so a bad checkpoint fails at open, not mid-serving.
    const keys: TensorKey[] = ["embedding", "finalNorm"];
    for (let l = 0; l < config.numLayers; l++) for (const t of LAYER_TENSORS) keys.push({ layer: l, tensor: t });
    // A tied checkpoint that still stores lm_head.weight is served from the embedding all the same.
    if (!config.tieWordEmbeddings) keys.push("lmHead");
    const locations = new Map<string, TensorLocation>();
    for (const key of keys) {
      const name = hfTensorName(key);
      const e = await entry(name);
      if (!e) throw new ModelFormatError(`${dir}: missing tensor "${name}"`);
      const shape = hfTensorShape(config, key);
      if (!isDType(e.dtype)) throw new ModelFormatError(`${dir}: tensor "${name}" has unsupported dtype ${e.dtype} (supported: F32, F16, BF16)`);
      if (JSON.stringify(e.shape) !== JSON.stringify(shape)) {
        throw new ModelFormatError(`${dir}: tensor "${name}" has shape ${JSON.stringify(e.shape)}, config says ${JSON.stringify(shape)}`);
      }
      locations.set(name, { path: fileOf(name)!, offset: e.offset, dtype: e.dtype, elements: shape.reduce((a, b) => a * b, 1) });
    }
    return new LocatedModelSource(dir, config, reader, (key) => locations.get(hfTensorName(key)));
  } catch (e) {
    await reader.close();
    throw e;
  }
}
