import type { ModelConfig } from "./config.ts";
import type { ByteReader } from "./byte-reader.ts";
import { DTYPE_BYTES, decodeToF32, type DType } from "./dtype.ts";
import { checkLayerRange, LAYER_TENSORS, type LayerTensor, type LayerWeights, type LoadStageOptions, type ModelSource, type StageWeights } from "./weights.ts";

/** Where one tensor's bytes live. */
export interface TensorLocation {
  path: string;
  offset: number;
  dtype: DType;
  elements: number;
}

/** Format-neutral names of the tensors a stage may need. */
export type TensorKey = "embedding" | "finalNorm" | "lmHead" | { layer: number; tensor: LayerTensor };

export function keyName(key: TensorKey): string {
  return typeof key === "string" ? key : `layers.${key.layer}.${key.tensor}`;
}

export function byteLength(loc: TensorLocation): number {
  return loc.elements * DTYPE_BYTES[loc.dtype];
}

/**
 * A ModelSource over any format that can say where each tensor lives; the format modules
 * (llama2c.ts, hf.ts) only parse headers and build this map.
 */
export class LocatedModelSource implements ModelSource {
  constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    private readonly reader: ByteReader,
    /** undefined for "lmHead" means the head is tied to the embedding. */
    private readonly locate: (key: TensorKey) => TensorLocation | undefined,
  ) {}

  bytesRead(): number {
    return this.reader.bytesRead;
  }

  close(): Promise<void> {
    return this.reader.close();
  }

  async loadStage(opts: LoadStageOptions): Promise<StageWeights> {
    const { layerStart, layerEnd, withEmbedding, withHead, onProgress } = opts;
    checkLayerRange(this.config, layerStart, layerEnd);
    const headLoc = withHead ? this.locate("lmHead") : undefined;
    const tied = withHead && headLoc === undefined;

    const plan = new Map<string, TensorLocation>();
    const want = (key: TensorKey, loc = this.locate(key)): void => {
      if (!loc) throw new Error(`no location for tensor ${keyName(key)}`);
      plan.set(keyName(key), loc);
    };
    for (let l = layerStart; l < layerEnd; l++) for (const t of LAYER_TENSORS) want({ layer: l, tensor: t });
    if (withEmbedding || tied) want("embedding");
    if (withHead) want("finalNorm");
    if (headLoc) want("lmHead", headLoc);

    const bytesTotal = [...plan.values()].reduce((s, loc) => s + byteLength(loc), 0);
    let bytesLoaded = 0;
    onProgress?.({ bytesLoaded, bytesTotal });
    const loaded = new Map<string, Float32Array>();
    for (const [name, loc] of plan) {
      const bytes = new Uint8Array(byteLength(loc));
      await this.reader.read(loc.path, loc.offset, bytes, (n) => {
        bytesLoaded += n;
        onProgress?.({ bytesLoaded, bytesTotal });
      });
      loaded.set(name, decodeToF32(bytes, loc.dtype));
    }
    const get = (key: TensorKey): Float32Array => loaded.get(keyName(key))!;

    const layers: LayerWeights[] = [];
    for (let l = layerStart; l < layerEnd; l++) {
      const entries = LAYER_TENSORS.map((t) => [t, get({ layer: l, tensor: t })] as const);
      layers.push(Object.fromEntries(entries) as Record<LayerTensor, Float32Array>);
    }
    const stage: StageWeights = { config: this.config, layerStart, layerEnd, layers };
    if (withEmbedding) stage.embedding = get("embedding");
    if (withHead) {
      stage.finalNorm = get("finalNorm");
      stage.lmHead = tied ? get("embedding") : get("lmHead");
    }
    return stage;
  }
}
