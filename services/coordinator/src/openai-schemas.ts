import { z } from "zod";

// Request bodies of the OpenAI API as this server accepts them. Fields OpenAI defines but this
// server cannot honour are rejected with a 400 rather than silently ignored; unknown fields are
// dropped. `null` is accepted wherever OpenAI accepts it and means "default".

const tokenIds = z.array(z.number().int().nonnegative()).min(1);
const stop = z.union([z.string().min(1), z.array(z.string().min(1)).max(16)]);
const unsupportedUnlessDefault = <T extends z.ZodType>(schema: T, defaultValue: z.infer<T>, what: string) =>
  schema.nullish().refine((v) => v === undefined || v === null || v === defaultValue, { message: `${what} is not supported by this server` });

const sampling = {
  model: z.string().nullish(),
  max_tokens: z.number().int().positive().nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  /** vLLM's extension: 0 or -1 is off. */
  top_k: z.number().int().min(-1).nullish(),
  seed: z.number().int().nullish(),
  n: z.number().int().min(1).max(16).nullish(),
  stop: stop.nullish(),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  /** vLLM's extension: keep generating past end-of-sequence tokens (fixed-length load tests). */
  ignore_eos: z.boolean().nullish(),
  /** vLLM's extension: requests with different salts never share cached KV blocks (tenant isolation). */
  cache_salt: z.string().min(1).max(256).nullish(),
  user: z.string().nullish(),
  frequency_penalty: unsupportedUnlessDefault(z.number(), 0, "frequency_penalty"),
  presence_penalty: unsupportedUnlessDefault(z.number(), 0, "presence_penalty"),
};

// vLLM's runtime adapter endpoints.
export const LoadLoraAdapterRequestSchema = z.object({ lora_name: z.string().min(1), lora_path: z.string().min(1) });
export const UnloadLoraAdapterRequestSchema = z.object({ lora_name: z.string().min(1) });

export const CompletionRequestSchema = z.object({
  ...sampling,
  prompt: z.union([z.string(), tokenIds, z.array(z.string()).length(1, "one prompt per request"), z.array(tokenIds).length(1, "one prompt per request")]),
  /** Number of most likely alternatives per token to return, with the sampled token's log-probability. */
  logprobs: z.number().int().min(0).max(20).nullish(),
  echo: unsupportedUnlessDefault(z.boolean(), false, "echo"),
  suffix: unsupportedUnlessDefault(z.string(), "", "suffix"),
  best_of: unsupportedUnlessDefault(z.number(), 1, "best_of"),
});
export type CompletionRequest = z.infer<typeof CompletionRequestSchema>;

const textPart = z.object({ type: z.literal("text"), text: z.string() });

export const ChatMessageSchema = z.object({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), z.array(textPart)]).nullish(),
  name: z.string().nullish(),
});

export const ChatCompletionRequestSchema = z.object({
  ...sampling,
  messages: z.array(ChatMessageSchema).min(1),
  max_completion_tokens: z.number().int().positive().nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  tools: z
    .array(z.unknown())
    .nullish()
    .refine((v) => !v || v.length === 0, { message: "tools are not supported by this server" }),
});
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>;

export function stopStrings(value: string | string[] | null | undefined): string[] {
  if (value === undefined || value === null) return [];
  return typeof value === "string" ? [value] : value;
}

export function promptOf(prompt: CompletionRequest["prompt"]): string | number[] {
  if (typeof prompt === "string") return prompt;
  const first = prompt[0];
  if (typeof first === "number") return prompt as number[];
  return first as string | number[];
}
