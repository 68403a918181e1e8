import { readFile } from "node:fs/promises";
import { ModelFormatError } from "./errors.ts";
import type { StreamDecoder, Tokenizer } from "./tokenizer.ts";

// Ports llama2.c run.c's encode()/decode() exactly, so ids match the checkpoint's training.

const BOS = 1;
const EOS = 2;
const UNK = 0;
/** Byte-fallback tokens <0x00>..<0xFF> start at id 3. */
const BYTE_TOKEN_BASE = 3;

/** llama2.c tokenizer files share the .bin extension with checkpoints. */
export function isLlama2cTokenizerFile(name: string): boolean {
  return /^tok(enizer)?\d*\.bin$/.test(name);
}

/** Pieces are byte strings; a latin1 string holds one byte per char, so it serves as a map key. */
function key(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("latin1");
}

export function parseLlama2cTokenizer(path: string, data: Uint8Array): { pieces: Uint8Array[]; scores: Float32Array } {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const bad = (why: string) => new ModelFormatError(`${path}: not a llama2.c tokenizer (${why})`);
  if (data.byteLength < 4) throw bad("too short");
  const pieces: Uint8Array[] = [];
  const scores: number[] = [];
  // The file does not store the vocabulary size (run.c takes it from the checkpoint): read to the end.
  let at = 4;
  while (at < data.byteLength) {
    if (at + 8 > data.byteLength) throw bad(`truncated record header at byte ${at}`);
    const score = view.getFloat32(at, true);
    const len = view.getInt32(at + 4, true);
    at += 8;
    if (len < 0 || at + len > data.byteLength) throw bad(`record ${pieces.length} has bad length ${len}`);
    pieces.push(data.slice(at, at + len));
    scores.push(score);
    at += len;
  }
  if (pieces.length < BYTE_TOKEN_BASE + 256) throw bad(`only ${pieces.length} pieces, byte fallback needs ${BYTE_TOKEN_BASE + 256}`);
  return { pieces, scores: Float32Array.from(scores) };
}

export class Llama2cTokenizer implements Tokenizer {
  readonly vocabSize: number;
  readonly bosTokenId = BOS;
  readonly eosTokenIds = [EOS, BOS];
  private readonly lookup = new Map<string, number>();
  /** What each id decodes to: `<0xXX>` pieces become their raw byte. */
  private readonly bytesOf: Uint8Array[];

  constructor(
    private readonly pieces: Uint8Array[],
    private readonly scores: Float32Array,
  ) {
    this.vocabSize = pieces.length;
    // run.c bsearches a sorted copy; with unique pieces the first id of a piece is the one it finds.
    pieces.forEach((p, id) => {
      if (!this.lookup.has(key(p))) this.lookup.set(key(p), id);
    });
    this.bytesOf = pieces.map((p) => {
      const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(key(p));
      return m ? Uint8Array.of(parseInt(m[1], 16)) : p;
    });
  }

  static async load(path: string): Promise<Llama2cTokenizer> {
    const { pieces, scores } = parseLlama2cTokenizer(path, await readFile(path));
    return new Llama2cTokenizer(pieces, scores);
  }

  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const tokens: number[] = [];
    if (opts.addBos ?? true) tokens.push(BOS);
    if (text.length === 0) return tokens;
    // SentencePiece's dummy prefix: " Once" and "Once" mid-text encode alike.
    tokens.push(this.lookup.get(" ") ?? BYTE_TOKEN_BASE + 0x20);

    const bytes = new TextEncoder().encode(text);
    for (let i = 0; i < bytes.length; ) {
      // One UTF-8 code point (run.c caps it at 4 bytes).
      let end = i + 1;
      while (end < bytes.length && (bytes[end] & 0xc0) === 0x80 && end - i < 4) end++;
      const cp = bytes.subarray(i, end);
      const id = this.lookup.get(key(cp));
      if (id !== undefined) tokens.push(id);
      else for (const b of cp) tokens.push(b + BYTE_TOKEN_BASE);
      i = end;
    }

    return this.mergePairs(tokens);
  }

  /**
   * run.c's merge rule: repeatedly merge the adjacent pair whose merged piece scores best (the
   * leftmost wins ties) until none merges. run.c rescans the whole list per merge, O(n^2); a heap
   * of candidate pairs over a linked list picks the same pair each time in O(n log n).
   */
  private mergePairs(tokens: number[]): number[] {
    const n = tokens.length;
    const id = Int32Array.from(tokens);
    const next = Int32Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const prev = Int32Array.from({ length: n }, (_, i) => i - 1);
    const version = new Uint32Array(n);
    const alive = new Uint8Array(n).fill(1);
    // Candidates: [score, left index, merged id, left version, right index, right version].
    const heap: Array<[number, number, number, number, number, number]> = [];
    const before = (a: (typeof heap)[0], b: (typeof heap)[0]) => a[0] > b[0] || (a[0] === b[0] && a[1] < b[1]);
    const push = (left: number): void => {
      const right = next[left];
      if (left < 0 || right < 0) return;
      const merged = this.lookup.get(key(this.pieces[id[left]]) + key(this.pieces[id[right]]));
      if (merged === undefined) return;
      heap.push([this.scores[merged], left, merged, version[left], right, version[right]]);
      for (let i = heap.length - 1; i > 0; ) {
        const parent = (i - 1) >> 1;
        if (!before(heap[i], heap[parent])) break;
        [heap[i], heap[parent]] = [heap[parent], heap[i]];
        i = parent;
      }
    };
    const pop = (): (typeof heap)[0] => {
      const top = heap[0];
      const last = heap.pop()!;
      if (heap.length > 0) {
        heap[0] = last;
        for (let i = 0; ; ) {
          const l = 2 * i + 1;
          const r = l + 1;
          let best = i;
          if (l < heap.length && before(heap[l], heap[best])) best = l;
          if (r < heap.length && before(heap[r], heap[best])) best = r;
          if (best === i) break;
          [heap[i], heap[best]] = [heap[best], heap[i]];
          i = best;
        }
      }
      return top;
    };
    for (let i = 0; i + 1 < n; i++) push(i);
    while (heap.length > 0) {
      const [, left, merged, leftVersion, right, rightVersion] = pop();
      // Stale: one side has merged, or been merged away, since this candidate was pushed.
      if (!alive[left] || !alive[right] || next[left] !== right || version[left] !== leftVersion || version[right] !== rightVersion) continue;
      id[left] = merged;
      version[left]++;
      alive[right] = 0;
      next[left] = next[right];
      if (next[right] >= 0) prev[next[right]] = left;
      push(prev[left]);
      push(left);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0 && i < n; i = next[i]) out.push(id[i]);
    return out;
  }

  /** Bytes of `id` following `prev`, as run.c's decode(): no text for special tokens, no space after BOS. */
  private pieceBytes(prev: number | undefined, id: number): Uint8Array {
    if (id === UNK || id === BOS || id === EOS) return new Uint8Array(0);
    const bytes = this.bytesOf[id];
    if (bytes === undefined) throw new RangeError(`token id ${id} is outside the vocabulary (size ${this.vocabSize})`);
    return prev === BOS && bytes[0] === 0x20 ? bytes.subarray(1) : bytes;
  }

  decode(ids: number[]): string {
    const d = this.createStreamDecoder();
    return ids.map((id) => d.push(id)).join("") + d.flush();
  }

  createStreamDecoder(): StreamDecoder {
    // TextDecoder in stream mode holds back an incomplete UTF-8 sequence split over byte tokens.
    const utf8 = new TextDecoder("utf-8");
    let prev: number | undefined;
    return {
      push: (id: number) => {
        const bytes = this.pieceBytes(prev, id);
        prev = id;
        return utf8.decode(bytes, { stream: true });
      },
      flush: () => utf8.decode(),
    };
  }
}
