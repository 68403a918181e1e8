import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { ModelFormatError } from "./errors.ts";
import { openHf } from "./hf.ts";
import { openLlama2c } from "./llama2c.ts";
import { isLlama2cTokenizerFile } from "./tokenizer-llama2c.ts";
import type { ModelSource } from "./weights.ts";

/** Opens a model folder: config.json means Hugging Face, otherwise one llama2.c *.bin checkpoint. */
export async function openModel(dir: string): Promise<ModelSource> {
  if (!existsSync(dir)) throw new ModelFormatError(`${dir}: model folder does not exist`);
  if (existsSync(join(dir, "config.json"))) return openHf(dir);
  const bins = readdirSync(dir).filter((f) => f.endsWith(".bin") && !isLlama2cTokenizerFile(f));
  if (bins.length === 1) return openLlama2c(dir, join(dir, bins[0]));
  if (bins.length > 1) throw new ModelFormatError(`${dir}: several llama2.c checkpoints (${bins.join(", ")}); expected one`);
  throw new ModelFormatError(`${dir}: no config.json (Hugging Face) and no *.bin checkpoint (llama2.c)`);
}
