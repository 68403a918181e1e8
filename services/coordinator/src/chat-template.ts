import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import type { Tokenizer } from "@strata/model";

export interface ChatMessage {
  role: string;
  content: string;
}

/**
 * The template for models whose tokenizer_config.json has none (the bundled stories260K among
 * them): a system message as a plain first paragraph, then one `User:` / `Assistant:` line per
 * turn, and `Assistant:` to prompt the reply. BOS comes from the tokenizer, not the template.
 */
export const DEFAULT_CHAT_TEMPLATE = [
  "{%- for message in messages -%}",
  "{%- if message.role == 'system' or message.role == 'developer' -%}{{ message.content + '\\n\\n' }}",
  "{%- elif message.role == 'assistant' -%}{{ 'Assistant: ' + message.content + '\\n' }}",
  "{%- else -%}{{ 'User: ' + message.content + '\\n' }}",
  "{%- endif -%}",
  "{%- endfor -%}",
  "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}",
].join("");

export class ChatTemplateError extends Error {
  override name = "ChatTemplateError";
}

// tokenizer_config.json writes special tokens as a string or as {"content": "..."}.
function tokenText(value: unknown): string {
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null && typeof (value as { content?: unknown }).content === "string") return (value as { content: string }).content;
  return "";
}

/**
 * A model's chat template (Hugging Face `chat_template`, rendered with @huggingface/jinja the way
 * `apply_chat_template` does) and how its output becomes token ids.
 */
export class ChatTemplate {
  private readonly template: Template;

  private constructor(
    readonly source: string,
    /** The model's own template (true) or DEFAULT_CHAT_TEMPLATE (false). */
    readonly fromModel: boolean,
    private readonly bosToken: string,
    private readonly eosToken: string,
  ) {
    try {
      this.template = new Template(source);
    } catch (error) {
      throw new ChatTemplateError(`chat template does not parse: ${(error as Error).message}`);
    }
  }

  static fromSource(source: string, opts: { fromModel?: boolean; bosToken?: string; eosToken?: string } = {}): ChatTemplate {
    return new ChatTemplate(source, opts.fromModel ?? true, opts.bosToken ?? "", opts.eosToken ?? "");
  }

  /** The template in `dir/tokenizer_config.json`, or the documented default when there is none. */
  static async load(dir: string): Promise<ChatTemplate> {
    const path = join(dir, "tokenizer_config.json");
    if (!existsSync(path)) return new ChatTemplate(DEFAULT_CHAT_TEMPLATE, false, "", "");
    let config: Record<string, unknown>;
    try {
      config = JSON.parse(await readFile(path, "utf8")) as Record<string, unknown>;
    } catch (error) {
      throw new ChatTemplateError(`${path}: ${(error as Error).message}`);
    }
    let source = config.chat_template;
    // Newer configs list named templates; "default" is the one apply_chat_template uses.
    if (Array.isArray(source)) {
      const named = source as Array<{ name?: unknown; template?: unknown }>;
      source = (named.find((t) => t.name === "default") ?? named[0])?.template;
    }
    if (typeof source !== "string" || source.length === 0) return new ChatTemplate(DEFAULT_CHAT_TEMPLATE, false, "", "");
    return new ChatTemplate(source, true, tokenText(config.bos_token), tokenText(config.eos_token));
  }

  render(messages: readonly ChatMessage[], opts: { addGenerationPrompt?: boolean } = {}): string {
    try {
      return this.template.render({
        messages,
        add_generation_prompt: opts.addGenerationPrompt ?? true,
        bos_token: this.bosToken,
        eos_token: this.eosToken,
      });
    } catch (error) {
      throw new ChatTemplateError(`chat template failed to render: ${(error as Error).message}`);
    }
  }

  /**
   * Prompt ids for `messages`. A model's template writes its own special tokens (as
   * apply_chat_template, it is tokenized without adding any); the default one gets the
   * tokenizer's BOS.
   */
  encode(tokenizer: Tokenizer, messages: readonly ChatMessage[]): number[] {
    return tokenizer.encode(this.render(messages), { addBos: !this.fromModel });
  }
}
