import { llama2cConfig, type Llama2cHeader, type ModelConfig } from "./config.ts";
import { ByteReader } from "./byte-reader.ts";
import { ModelFormatError } from "./errors.ts";
import { LocatedModelSource, type TensorKey, type TensorLocation } from "./tensor-source.ts";
import { layerTensorShape } from "./weights.ts";

const HEADER_BYTES = 7 * 4;
const F32_BYTES = 4;

function parseHeader(path: string, bytes: Uint8Array): Llama2cHeader {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen] = Array.from({ length: 7 }, (_, i) => v.getInt32(i * 4, true));
  const h: Llama2cHeader = { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen };
  // Loose bounds catch a file that is not a llama2.c checkpoint before we compute absurd offsets.
  const sane = (x: number) => x > 0 && x <= 1 << 24;
  const ok =
    [dim, hiddenDim, nLayers, nHeads, nKvHeads, Math.abs(vocabSize), seqLen].every(sane) &&
    dim % nHeads === 0 &&
    nHeads % nKvHeads === 0 &&
    (dim / nHeads) % 2 === 0;
  if (!ok) throw new ModelFormatError(`${path}: not a llama2.c checkpoint (bad header ${JSON.stringify(h)})`);
  return h;
}

/**
 * Element offsets of every tensor, in llama2.c's legacy order: embedding, rms_att, wq, wk, wv, wo,
 * rms_ffn, w1, w2, w3, rms_final, freq_cis_real, freq_cis_imag (unused), then wcls when not shared.
 */
function layout(c: ModelConfig): { offsets: Record<string, number>; totalElements: number } {
  const { hiddenSize: d, intermediateSize: f, numLayers: L, vocabSize: vocab, headDim: hd, maxPositionEmbeddings: seq } = c;
  const q = c.numHeads * hd;
  const kv = c.numKvHeads * hd;
  const sizes: [string, number][] = [
    ["embedding", vocab * d],
    ["attnNorm", L * d],
    ["wq", L * q * d],
    ["wk", L * kv * d],
    ["wv", L * kv * d],
    ["wo", L * d * q],
    ["ffnNorm", L * d],
    ["wGate", L * f * d], // w1
    ["wDown", L * d * f], // w2
    ["wUp", L * f * d], // w3
    ["finalNorm", d],
    ["freqCis", seq * hd], // real and imaginary halves, seq × hd/2 each
    ["lmHead", c.tieWordEmbeddings ? 0 : vocab * d],
  ];
  const offsets: Record<string, number> = {};
  let at = 0;
  for (const [name, n] of sizes) {
    offsets[name] = at;
    at += n;
  }
  return { offsets, totalElements: at };
}

export async function openLlama2c(dir: string, path: string): Promise<LocatedModelSource> {
  const reader = new ByteReader();
  try {
    const fileBytes = await reader.size(path);
    if (fileBytes < HEADER_BYTES) throw new ModelFormatError(`${path}: ${fileBytes} bytes is too short for a llama2.c header`);
    const header = new Uint8Array(HEADER_BYTES);
    await reader.read(path, 0, header);
    const config = llama2cConfig(parseHeader(path, header));
    const { offsets, totalElements } = layout(config);
    const expected = HEADER_BYTES + totalElements * F32_BYTES;
    if (fileBytes !== expected) {
      const why = fileBytes < expected ? "truncated" : "has trailing bytes";
      throw new ModelFormatError(`${path}: ${why}: header promises ${expected} bytes, file has ${fileBytes}`);
    }
    const at = (elementOffset: number, elements: number): TensorLocation => ({
      path,
      offset: HEADER_BYTES + elementOffset * F32_BYTES,
      dtype: "F32",
      elements,
    });
    const locate = (key: TensorKey): TensorLocation | undefined => {
      const d = config.hiddenSize;
      if (key === "embedding") return at(offsets.embedding, config.vocabSize * d);
      if (key === "finalNorm") return at(offsets.finalNorm, d);
      if (key === "lmHead") return config.tieWordEmbeddings ? undefined : at(offsets.lmHead, config.vocabSize * d);
      // Each tensor kind is stored for all layers back to back, so layer l's slice is l strides in.
      const [rows, cols] = layerTensorShape(config, key.tensor);
      const n = rows * cols;
      return at(offsets[key.tensor] + key.layer * n, n);
    };
    return new LocatedModelSource(dir, config, reader, locate);
  } catch (e) {
    await reader.close();
    throw e;
  }
}
