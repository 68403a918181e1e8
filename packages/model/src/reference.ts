import type { ModelConfig } from "./config.ts";
import type { StageWeights } from "./weights.ts";

// The oracle every fast path is judged against: plain loops in float64, whole sequence every call,
// no cache, no batching. Keep it obviously correct rather than fast.

type Vec = Float64Array;

/** y = W x for a row-major W [rows, x.length]. */
function matvec(w: Float32Array, x: Vec, rows: number): Vec {
  const cols = x.length;
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += w[r * cols + c] * x[c];
    y[r] = s;
  }
  return y;
}

function rmsNorm(x: Vec, weight: Float32Array, eps: number): Vec {
  let ss = 0;
  for (const v of x) ss += v * v;
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * scale * weight[i]);
}

/** Rotates each head of `v` (numHeads × headDim) in place for position `pos`. */
function rope(v: Vec, numHeads: number, config: ModelConfig, pos: number): void {
  const hd = config.headDim;
  const half = hd / 2;
  for (let h = 0; h < numHeads; h++) {
    for (let i = 0; i < half; i++) {
      const angle = pos * Math.pow(config.ropeTheta, (-2 * i) / hd);
      const cos = Math.cos(angle);
      const sin = Math.sin(angle);
      // interleaved: pair (2i, 2i+1); rotate-half: pair (i, i + hd/2). Same frequency for pair i.
      const a = h * hd + (config.ropeStyle === "interleaved" ? 2 * i : i);
      const b = h * hd + (config.ropeStyle === "interleaved" ? 2 * i + 1 : i + half);
      const x0 = v[a];
      const x1 = v[b];
      v[a] = x0 * cos - x1 * sin;
      v[b] = x0 * sin + x1 * cos;
    }
  }
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

function checkWeights(config: ModelConfig, w: StageWeights): void {
  if (w.layerStart !== 0 || w.layerEnd !== config.numLayers || w.layers.length !== config.numLayers) {
    throw new Error(`reference forward needs all ${config.numLayers} layers, got [${w.layerStart}, ${w.layerEnd})`);
  }
  if (!w.embedding || !w.finalNorm || !w.lmHead) throw new Error("reference forward needs the embedding, final norm and LM head");
}

/** Logits [tokenIds.length, vocab] row-major for tokens at positions 0..n-1. */
export function referenceForward(config: ModelConfig, weights: StageWeights, tokenIds: number[]): Float32Array {
  checkWeights(config, weights);
  const { hiddenSize: d, numHeads: nh, numKvHeads: nkv, headDim: hd, intermediateSize: ff, vocabSize: vocab, rmsNormEps: eps } = config;
  const n = tokenIds.length;
  const groupSize = nh / nkv;
  const window = config.slidingWindow ?? Infinity;

  const x: Vec[] = tokenIds.map((id) => {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new RangeError(`token id ${id} is outside the vocabulary (size ${vocab})`);
    return Float64Array.from(weights.embedding!.subarray(id * d, (id + 1) * d));
  });

  for (const layer of weights.layers) {
    const q: Vec[] = [];
    const k: Vec[] = [];
    const v: Vec[] = [];
    for (let t = 0; t < n; t++) {
      const xn = rmsNorm(x[t], layer.attnNorm, eps);
      q.push(matvec(layer.wq, xn, nh * hd));
      k.push(matvec(layer.wk, xn, nkv * hd));
      v.push(matvec(layer.wv, xn, nkv * hd));
      rope(q[t], nh, config, t);
      rope(k[t], nkv, config, t);
    }
    for (let t = 0; t < n; t++) {
      const attn = new Float64Array(nh * hd);
      for (let h = 0; h < nh; h++) {
        const kvh = Math.floor(h / groupSize);
        // Causal, and within the sliding window when the model has one.
        const first = Math.max(0, t - window + 1);
        const scores: number[] = [];
        for (let s = first; s <= t; s++) {
          let dot = 0;
          for (let i = 0; i < hd; i++) dot += q[t][h * hd + i] * k[s][kvh * hd + i];
          scores.push(dot / Math.sqrt(hd));
        }
        const max = scores.reduce((a, b) => Math.max(a, b), -Infinity);
        const exps = scores.map((sc) => Math.exp(sc - max));
        const sum = exps.reduce((a, b) => a + b, 0);
        for (let s = first; s <= t; s++) {
          const p = exps[s - first] / sum;
          for (let i = 0; i < hd; i++) attn[h * hd + i] += p * v[s][kvh * hd + i];
        }
      }
      const o = matvec(layer.wo, attn, d);
      for (let i = 0; i < d; i++) x[t][i] += o[i];

      const xn = rmsNorm(x[t], layer.ffnNorm, eps);
      const gate = matvec(layer.wGate, xn, ff);
      const up = matvec(layer.wUp, xn, ff);
      const act = gate.map((g, i) => silu(g) * up[i]);
      const down = matvec(layer.wDown, act, d);
      for (let i = 0; i < d; i++) x[t][i] += down[i];
    }
  }

  const logits = new Float32Array(n * vocab);
  for (let t = 0; t < n; t++) {
    logits.set(matvec(weights.lmHead!, rmsNorm(x[t], weights.finalNorm!, eps), vocab), t * vocab);
  }
  return logits;
}

/** Index of the largest value; the first one on ties, as run.c's argmax. */
export function argmax(values: Float32Array): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * Greedy decoding with run.c's loop: `steps` forward passes in all, prompt positions included (capped at
 * the context length). Returns prompt + generated ids; stops before a generated end token (which is not
 * included), as run.c does.
 */
export function referenceGenerateGreedy(config: ModelConfig, weights: StageWeights, promptIds: number[], steps: number): number[] {
  if (promptIds.length === 0) throw new Error("greedy generation needs at least one prompt token (usually BOS)");
  const passes = Math.min(steps, config.maxPositionEmbeddings);
  const tokens = [promptIds[0]];
  for (let pos = 0; pos < passes; pos++) {
    let next: number;
    if (pos + 1 < promptIds.length) {
      next = promptIds[pos + 1];
    } else {
      const logits = referenceForward(config, weights, tokens);
      next = argmax(logits.subarray(pos * config.vocabSize, (pos + 1) * config.vocabSize));
      if (config.eosTokenIds.includes(next)) break;
    }
    tokens.push(next);
  }
  return tokens;
}
