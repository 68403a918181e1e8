import type { ChoiceEvent, CompletionOutcome, TokenLogprob } from "./completions.ts";

// Response bodies and stream chunks in OpenAI's shapes, for /v1/completions and /v1/chat/completions.

export interface ResponseMeta {
  id: string;
  created: number;
  model: string;
}

export function usageOf(outcome: CompletionOutcome) {
  return { prompt_tokens: outcome.promptTokens, completion_tokens: outcome.completionTokens, total_tokens: outcome.promptTokens + outcome.completionTokens };
}

/** Completions-style logprobs; `textOffset` is where the first token's text starts in the choice's text. */
function completionLogprobs(tokens: TokenLogprob[], textOffset: number) {
  const offsets: number[] = [];
  let at = textOffset;
  for (const t of tokens) {
    offsets.push(at);
    at += t.token.length;
  }
  return {
    tokens: tokens.map((t) => t.token),
    token_logprobs: tokens.map((t) => t.logprob),
    top_logprobs: tokens.map((t) => Object.fromEntries(t.top.map((a) => [a.token, a.logprob]))),
    text_offset: offsets,
  };
}

function chatLogprobs(tokens: TokenLogprob[]) {
  return {
    content: tokens.map((t) => ({
      token: t.token,
      logprob: t.logprob,
      bytes: t.bytes,
      top_logprobs: t.top.map((a) => ({ token: a.token, logprob: a.logprob, bytes: a.bytes })),
    })),
    refusal: null,
  };
}

/** How one endpoint shapes its answers; the serving code is shared. */
export interface ResponseFormat {
  readonly idPrefix: string;
  response(meta: ResponseMeta, outcome: CompletionOutcome, withLogprobs: boolean): unknown;
  /** Chunks sent before any token (chat: the assistant role). */
  openingChunks(meta: ResponseMeta, n: number, withUsage: boolean): unknown[];
  chunk(meta: ResponseMeta, event: ChoiceEvent, withLogprobs: boolean, withUsage: boolean): unknown;
  usageChunk(meta: ResponseMeta, outcome: CompletionOutcome): unknown;
}

export function completionFormat(): ResponseFormat {
  // text_offset continues across a choice's chunks.
  const offsets = new Map<number, number>();
  return {
    idPrefix: "cmpl",
    response: (meta, outcome, withLogprobs) => ({
      id: meta.id,
      object: "text_completion",
      created: meta.created,
      model: meta.model,
      choices: outcome.choices.map((c) => ({
        index: c.index,
        text: c.text,
        logprobs: withLogprobs ? completionLogprobs(c.logprobs, 0) : null,
        finish_reason: c.finishReason,
      })),
      usage: usageOf(outcome),
    }),
    openingChunks: () => [],
    chunk: (meta, event, withLogprobs, withUsage) => {
      let logprobs = null;
      if (event.kind === "text" && withLogprobs) {
        const at = offsets.get(event.index) ?? 0;
        logprobs = completionLogprobs(event.logprobs, at);
        offsets.set(event.index, at + event.logprobs.reduce((sum, t) => sum + t.token.length, 0));
      }
      return {
        id: meta.id,
        object: "text_completion",
        created: meta.created,
        model: meta.model,
        choices: [
          {
            index: event.index,
            text: event.kind === "text" ? event.text : "",
            logprobs,
            finish_reason: event.kind === "finish" ? event.finishReason : null,
          },
        ],
        ...(withUsage ? { usage: null } : {}),
      };
    },
    usageChunk: (meta, outcome) => ({ id: meta.id, object: "text_completion", created: meta.created, model: meta.model, choices: [], usage: usageOf(outcome) }),
  };
}

export function chatFormat(): ResponseFormat {
  const chunkBase = (meta: ResponseMeta) => ({ id: meta.id, object: "chat.completion.chunk", created: meta.created, model: meta.model, system_fingerprint: null });
  return {
    idPrefix: "chatcmpl",
    response: (meta, outcome, withLogprobs) => ({
      id: meta.id,
      object: "chat.completion",
      created: meta.created,
      model: meta.model,
      system_fingerprint: null,
      choices: outcome.choices.map((c) => ({
        index: c.index,
        message: { role: "assistant", content: c.text, refusal: null },
        logprobs: withLogprobs ? chatLogprobs(c.logprobs) : null,
        finish_reason: c.finishReason,
      })),
      usage: usageOf(outcome),
    }),
    openingChunks: (meta, n, withUsage) =>
      Array.from({ length: n }, (_, index) => ({
        ...chunkBase(meta),
        choices: [{ index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }],
        ...(withUsage ? { usage: null } : {}),
      })),
    chunk: (meta, event, withLogprobs, withUsage) => ({
      ...chunkBase(meta),
      choices: [
        event.kind === "text"
          ? { index: event.index, delta: { content: event.text }, logprobs: withLogprobs ? chatLogprobs(event.logprobs) : null, finish_reason: null }
          : { index: event.index, delta: {}, logprobs: null, finish_reason: event.finishReason },
      ],
      ...(withUsage ? { usage: null } : {}),
    }),
    usageChunk: (meta, outcome) => ({ ...chunkBase(meta), choices: [], usage: usageOf(outcome) }),
  };
}
