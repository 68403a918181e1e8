import { Hono, type Context } from "hono";
import { bodyLimit } from "hono/body-limit";
import { z } from "zod";
import type { Tokenizer } from "@strata/model";
import { ContextLengthError, RequestAbortedError, RequestValidationError, type Engine } from "./engine.ts";

export interface HttpApiOptions {
  engine: Engine;
  tokenizer: Tokenizer;
  modelName: string;
  maxBodyBytes?: number;
}

const CompletionRequest = z.object({
  model: z.string().optional(),
  prompt: z.union([z.string(), z.array(z.number().int().nonnegative()).min(1)]),
  max_tokens: z.number().int().positive().optional().default(16),
  temperature: z.number().min(0).max(2).optional().default(1),
  top_p: z.number().gt(0).max(1).optional().default(1),
  top_k: z.number().int().min(0).optional().default(0),
  seed: z.number().int().optional(),
  stream: z.literal(false).optional(),
});

type ErrorType = "invalid_request_error" | "not_found_error" | "server_error";

// OpenAI's error body; the one place HTTP errors are shaped.
function openAiError(c: Context, status: 400 | 404 | 413 | 500 | 503, type: ErrorType, message: string, param: string | null = null) {
  return c.json({ error: { message, type, param, code: null } }, status);
}

export function createHttpApi(opts: HttpApiOptions): Hono {
  const app = new Hono();
  const { engine, tokenizer, modelName } = opts;

  app.get("/health", (c) => c.json({ status: "ok" }));
  app.get("/v1/models", (c) => c.json({ object: "list", data: [{ id: modelName, object: "model", owned_by: "strata", created: 0 }] }));

  app.post(
    "/v1/completions",
    bodyLimit({
      maxSize: opts.maxBodyBytes ?? 1024 * 1024,
      onError: (c) => openAiError(c, 413, "invalid_request_error", `request body exceeds ${opts.maxBodyBytes ?? 1024 * 1024} bytes`),
    }),
    async (c) => {
      let body: unknown;
      try {
        body = await c.req.json();
      } catch {
        return openAiError(c, 400, "invalid_request_error", "request body is not valid JSON");
      }
      const parsed = CompletionRequest.safeParse(body);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        return openAiError(c, 400, "invalid_request_error", `${issue.path.join(".") || "body"}: ${issue.message}`, issue.path.join(".") || null);
      }
      const req = parsed.data;
      if (req.model !== undefined && req.model !== modelName) {
        return openAiError(c, 404, "not_found_error", `model "${req.model}" does not exist; this server serves "${modelName}"`, "model");
      }
      const promptIds = typeof req.prompt === "string" ? tokenizer.encode(req.prompt) : req.prompt;
      const abort = new AbortController();
      c.req.raw.signal.addEventListener("abort", () => abort.abort(), { once: true });
      try {
        const result = await engine.generate({
          promptIds,
          maxTokens: req.max_tokens,
          sampling: { temperature: req.temperature, topP: req.top_p, topK: req.top_k },
          seed: req.seed,
          signal: abort.signal,
        });
        return c.json({
          id: `cmpl-${crypto.randomUUID()}`,
          object: "text_completion",
          created: Math.floor(Date.now() / 1000),
          model: modelName,
          choices: [{ index: 0, text: tokenizer.decode(result.tokenIds), logprobs: null, finish_reason: result.finishReason }],
          usage: {
            prompt_tokens: result.promptTokenIds.length,
            completion_tokens: result.tokenIds.length,
            total_tokens: result.promptTokenIds.length + result.tokenIds.length,
          },
        });
      } catch (error) {
        if (error instanceof ContextLengthError) return openAiError(c, 400, "invalid_request_error", error.message, "max_tokens");
        if (error instanceof RequestValidationError) return openAiError(c, 400, "invalid_request_error", error.message);
        // The client is gone when its request aborts; the status only reaches logs.
        if (error instanceof RequestAbortedError) return openAiError(c, 400, "invalid_request_error", "request aborted");
        return openAiError(c, 500, "server_error", (error as Error).message);
      }
    },
  );
  return app;
}
