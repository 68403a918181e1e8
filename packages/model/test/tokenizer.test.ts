import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BUNDLED_HF_MODEL_DIR, BUNDLED_MODEL_DIR, loadTokenizer, ModelFormatError, type Tokenizer } from "../src/index.ts";

const greedy = JSON.parse(readFileSync(join(BUNDLED_MODEL_DIR, "greedy.json"), "utf8")) as { prompt: string; prompt_token_ids: number[]; token_ids: number[]; text: string };

const STRINGS = [
  "Once upon a time",
  "Hello, world! The cat sat on the mat.",
  "a  b   c    d",
  "  leading and trailing  ",
  "tab\there\nnew\n\nline\r\n",
  "café naïve résumé Ærø",
  "日本語のテキスト",
  "hi 🙂 there!",
  "",
];

function streamAll(tok: Tokenizer, ids: number[]): string[] {
  const d = tok.createStreamDecoder();
  return [...ids.map((id) => d.push(id)), d.flush()];
}

const tok = await loadTokenizer(BUNDLED_MODEL_DIR);
const hf = await loadTokenizer(BUNDLED_HF_MODEL_DIR);
const ref = tok;

describe("llama2.c tokenizer (tok512.bin)", () => {
  it("encodes like run.c", () => {
    expect(tok.vocabSize).toBe(512);
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenIds).toEqual([2, 1]);
    expect(tok.encode(greedy.prompt)).toEqual(greedy.prompt_token_ids);
    expect(tok.encode("Once upon a time")).toEqual([1, 403, 407, 261, 378]);
    expect(tok.encode("Once upon a time", { addBos: false })).toEqual([403, 407, 261, 378]);
    expect(tok.encode("")).toEqual([1]);
    expect(tok.encode("", { addBos: false })).toEqual([]);
    // Not in the vocabulary as a code point: falls back to UTF-8 bytes (id = byte + 3).
    expect(tok.encode("日", { addBos: false })).toEqual([410, 0xe6 + 3, 0x97 + 3, 0xa5 + 3]);
  });

  it("decodes greedy.json's ids to its text", () => {
    expect(tok.decode(greedy.token_ids)).toBe(greedy.text);
    expect(streamAll(tok, greedy.token_ids).join("")).toBe(greedy.text);
  });

  it("round trips text through encode and decode", () => {
    for (const s of STRINGS) expect(tok.decode(tok.encode(s))).toBe(s);
  });

  it("keeps a piece's leading space unless it follows BOS", () => {
    expect(tok.decode([1, 403])).toBe("Once");
    expect(tok.decode([403, 407])).toBe(" Once upon");
    expect(tok.decode([1, 403, 2])).toBe("Once");
  });

  it("streams a multi-byte character split over byte tokens", () => {
    const ids = tok.encode("日本", { addBos: false });
    expect(ids).toEqual([410, 233, 154, 168, 233, 159, 175]);
    expect(streamAll(tok, ids)).toEqual([" ", "", "", "日", "", "", "本", ""]);
    const emoji = tok.encode("🙂", { addBos: false }).slice(1);
    expect(emoji).toHaveLength(4);
    expect(streamAll(tok, emoji)).toEqual(["", "", "", "🙂", ""]);
    // An incomplete character at the end comes out as U+FFFD on flush.
    expect(streamAll(tok, emoji.slice(0, 2))).toEqual(["", "", "\uFFFD"]);
  });
});

describe("Hugging Face tokenizer (tokenizer.json)", () => {
  it("reads special tokens from the model's configs", () => {
    expect(hf.vocabSize).toBe(512);
    expect(hf.bosTokenId).toBe(1);
    expect(hf.eosTokenIds).toEqual([2, 1]);
  });

  it("gives the same ids as tok512.bin", () => {
    expect(hf.encode("")).toEqual([1]);
    for (const s of STRINGS) {
      expect(hf.encode(s), JSON.stringify(s)).toEqual(ref.encode(s));
      expect(hf.encode(s, { addBos: false }), JSON.stringify(s)).toEqual(ref.encode(s, { addBos: false }));
    }
  });

  it("decodes like tok512.bin, whole and streamed", () => {
    const cases = [...STRINGS.map((s) => ref.encode(s)), ...STRINGS.map((s) => ref.encode(s, { addBos: false })), greedy.token_ids, greedy.token_ids.slice(5)];
    for (const ids of cases) {
      expect(hf.decode(ids)).toBe(ref.decode(ids));
      const streamed = streamAll(hf, ids);
      expect(streamed.join("")).toBe(ref.decode(ids));
      expect(streamed.some((s) => s.includes("\uFFFD"))).toBe(false);
    }
  });

  it("streams a multi-byte character only once it is complete", () => {
    const ids = ref.encode("日本", { addBos: false });
    expect(streamAll(hf, ids)).toEqual([" ", "", "", "日", "", "", "本", ""]);
  });
});

describe("loadTokenizer", () => {
  it("fails clearly for a folder without a tokenizer", async () => {
    await expect(loadTokenizer(join(BUNDLED_MODEL_DIR, "..", "missing"))).rejects.toThrow(ModelFormatError);
  });
});

describe("llama2.c merge order on long text", () => {
  // The Hugging Face BPE is an independent implementation of the same merges: on long random
  // text with many equal-score ties, both must pick the same pairs in the same order.
  it("matches the Hugging Face tokenizer on 20 random 2,000-character texts", () => {
    let state = 12345;
    const rand = () => ((state = (state * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const alphabet = "abcdefghijklmnopqrstuvwxyz     ,.!?'\nTheOnceLily";
    for (let t = 0; t < 20; t++) {
      const text = Array.from({ length: 2000 }, () => alphabet[Math.floor(rand() * alphabet.length)]).join("");
      expect(tok.encode(text)).toEqual(hf.encode(text));
    }
  });
});
