import { fileURLToPath } from "node:url";

/** stories260K in llama2.c format (weights + tok512.bin), shipped with this package. */
export const BUNDLED_MODEL_DIR = fileURLToPath(new URL("../models/stories260K", import.meta.url));

/** The same weights as a Hugging Face Llama folder (safetensors, tokenizer.json, rotate-half layout). */
export const BUNDLED_HF_MODEL_DIR = fileURLToPath(new URL("../models/stories260K-hf", import.meta.url));
