import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { ModelFormatError } from "./errors.ts";
import { HfTokenizer } from "./tokenizer-hf.ts";
import { isLlama2cTokenizerFile, Llama2cTokenizer } from "./tokenizer-llama2c.ts";

export interface StreamDecoder {
  /** Text that the id completes; empty while a multi-byte character is still incomplete. */
  push(id: number): string;
  /** Whatever is still held back (an incomplete character becomes U+FFFD). */
  flush(): string;
}

export interface Tokenizer {
  vocabSize: number;
  bosTokenId: number;
  eosTokenIds: number[];
  /** addBos defaults to true. */
  encode(text: string, opts?: { addBos?: boolean }): number[];
  /** Whole-sequence decode; BOS/EOS produce no text. */
  decode(ids: number[]): string;
  createStreamDecoder(): StreamDecoder;
}

/** tokenizer.json (Hugging Face) if present, else a llama2.c tokenizer file (tok512.bin, tokenizer.bin). */
export async function loadTokenizer(dir: string): Promise<Tokenizer> {
  if (existsSync(join(dir, "tokenizer.json"))) return HfTokenizer.load(dir);
  const files = existsSync(dir) ? readdirSync(dir).filter(isLlama2cTokenizerFile).sort() : [];
  if (files.length === 1) return Llama2cTokenizer.load(join(dir, files[0]));
  if (files.length > 1) throw new ModelFormatError(`${dir}: several llama2.c tokenizer files (${files.join(", ")}); expected one`);
  throw new ModelFormatError(`${dir}: no tokenizer.json and no llama2.c tokenizer (tok*.bin or tokenizer.bin)`);
}
