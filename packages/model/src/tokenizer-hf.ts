import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer as HfTokenizerImpl } from "@huggingface/tokenizers";
import { hfSpecialTokens } from "./config.ts";
import { ModelFormatError } from "./errors.ts";
import type { StreamDecoder, Tokenizer } from "./tokenizer.ts";

async function readJsonObject(path: string): Promise<Record<string, unknown>> {
  let value: unknown;
  try {
    value = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw new ModelFormatError(`${path}: cannot read as JSON (${(e as Error).message})`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw new ModelFormatError(`${path}: not a JSON object`);
  return value as Record<string, unknown>;
}

const REPLACEMENT_CHAR = "\uFFFD";

/**
 * tokenizer.json through @huggingface/tokenizers. Decoding keeps run.c's rule for spaces: a leading
 * space is dropped only after BOS. Llama's decoder strips the first space of whatever it is given, so
 * text that does not start at BOS is decoded behind an anchor token and the anchor's text cut off.
 */
export class HfTokenizer implements Tokenizer {
  readonly vocabSize: number;
  private readonly specialIds: Set<number>;
  private readonly anchorId: number;
  private readonly anchorText: string;

  constructor(
    private readonly impl: HfTokenizerImpl,
    readonly bosTokenId: number,
    readonly eosTokenIds: number[],
  ) {
    const vocab = impl.get_vocab(true);
    let maxId = -1;
    for (const id of vocab.values()) maxId = Math.max(maxId, id);
    this.vocabSize = maxId + 1;
    this.specialIds = new Set<number>();
    for (const [id, token] of impl.get_added_tokens_decoder()) if (token.special) this.specialIds.add(id);
    // Any ordinary, non-byte piece whose text is stable serves as the anchor.
    const anchor = [...vocab.entries()]
      .sort((a, b) => a[1] - b[1])
      .find(([piece, id]) => !this.specialIds.has(id) && !/^<0x[0-9A-Fa-f]{2}>$/.test(piece) && this.rawDecode([id]).length > 0 && !this.rawDecode([id]).includes(REPLACEMENT_CHAR));
    if (!anchor) throw new ModelFormatError("tokenizer.json has no ordinary token to anchor decoding");
    this.anchorId = anchor[1];
    this.anchorText = this.rawDecode([this.anchorId]);
  }

  static async load(dir: string): Promise<HfTokenizer> {
    const tokenizerJson = await readJsonObject(join(dir, "tokenizer.json"));
    const configPath = join(dir, "tokenizer_config.json");
    const tokenizerConfig = existsSync(configPath) ? await readJsonObject(configPath) : {};
    const impl = new HfTokenizerImpl(tokenizerJson, tokenizerConfig);
    let bosTokenId = -1;
    let eosTokenIds: number[] = [];
    if (existsSync(join(dir, "config.json"))) {
      const genPath = join(dir, "generation_config.json");
      const gen = existsSync(genPath) ? await readJsonObject(genPath) : undefined;
      ({ bosTokenId, eosTokenIds } = hfSpecialTokens(await readJsonObject(join(dir, "config.json")), gen));
    }
    // Without a model config, fall back to the tokenizer's own named special tokens.
    const idOf = (v: unknown) => (typeof v === "string" ? impl.token_to_id(v) : undefined);
    if (bosTokenId < 0) bosTokenId = idOf(tokenizerConfig.bos_token) ?? -1;
    if (eosTokenIds.length === 0) {
      const eos = idOf(tokenizerConfig.eos_token);
      if (eos !== undefined) eosTokenIds = [eos];
    }
    return new HfTokenizer(impl, bosTokenId, eosTokenIds);
  }

  private rawDecode(ids: number[]): string {
    return ids.length === 0 ? "" : this.impl.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  }

  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    return this.impl.encode(text, { add_special_tokens: opts.addBos ?? true }).ids;
  }

  decode(ids: number[]): string {
    if (ids.length === 0) return "";
    if (ids[0] === this.bosTokenId) return this.rawDecode(ids);
    const text = this.rawDecode([this.anchorId, ...ids]);
    return text.startsWith(this.anchorText) ? text.slice(this.anchorText.length) : this.rawDecode(ids);
  }

  /**
   * Incremental detokenization as TGI and vLLM do it: decode a short window ending at the newest token and
   * emit what it adds over the same window without it; hold back while the text ends in an incomplete
   * UTF-8 sequence.
   */
  createStreamDecoder(): StreamDecoder {
    const ids: number[] = [];
    let prefixOffset = 0;
    let readOffset = 0;
    const step = (final: boolean): string => {
      const prefixText = this.decode(ids.slice(prefixOffset, readOffset));
      const newText = this.decode(ids.slice(prefixOffset));
      if (newText.length > prefixText.length && (final || !newText.endsWith(REPLACEMENT_CHAR))) {
        prefixOffset = readOffset;
        readOffset = ids.length;
        return newText.slice(prefixText.length);
      }
      return "";
    };
    return {
      push: (id: number) => {
        ids.push(id);
        return step(false);
      },
      flush: () => step(true),
    };
  }
}
