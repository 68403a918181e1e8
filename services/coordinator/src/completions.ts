import type { Tokenizer } from "@strata/model";
import { logSoftmax, type SamplingParams } from "@strata/sampling";
import { RequestAbortedError, type AdapterRef, type Engine, type FinishReason } from "./engine.ts";
import { StopStringFilter } from "./stop-strings.ts";
import type { RequestTrace } from "./tracing.ts";

/** One API request's generation work, after parsing: n independent sequences from one prompt. */
export interface CompletionJob {
  promptIds: number[];
  maxTokens: number;
  n: number;
  sampling: SamplingParams;
  /** Choice i samples with seed + i, so choices differ and the whole request is reproducible. */
  seed?: number;
  stop: string[];
  /** Alternatives per token to report with the sampled token's log-probability; undefined: none. */
  topLogprobs?: number;
  ignoreEos: boolean;
  /** Prefix-cache isolation: blocks are shared only between requests with the same salt. */
  cacheSalt?: string;
  /** The LoRA adapter the request names as its model. */
  adapter?: AdapterRef;
}

export interface TokenAlternative {
  token: string;
  bytes: number[];
  logprob: number;
}

export interface TokenLogprob extends TokenAlternative {
  top: TokenAlternative[];
}

export type ChoiceEvent =
  | { kind: "text"; index: number; text: string; logprobs: TokenLogprob[] }
  | { kind: "finish"; index: number; finishReason: FinishReason };

export interface ChoiceResult {
  index: number;
  text: string;
  finishReason: FinishReason;
  logprobs: TokenLogprob[];
  completionTokens: number;
}

export interface CompletionOutcome {
  choices: ChoiceResult[];
  promptTokens: number;
  completionTokens: number;
}

function alternative(tokenizer: Tokenizer, id: number, logprob: number): TokenAlternative {
  const token = tokenizer.decode([id]);
  return { token, bytes: [...Buffer.from(token, "utf8")], logprob };
}

/** The sampled token's log-probability under the model's raw distribution, and the k most likely. */
function tokenLogprob(tokenizer: Tokenizer, id: number, logits: Float32Array, k: number): TokenLogprob {
  const lp = logSoftmax(logits);
  const top: number[] = [];
  // k is at most 20: a partial selection beats sorting the vocabulary.
  for (let i = 0; i < lp.length; i++) {
    if (top.length < k || lp[i] > lp[top[top.length - 1]]) {
      let at = Math.min(top.length, k - 1);
      top[at] = i;
      while (at > 0 && lp[top[at]] > lp[top[at - 1]]) {
        [top[at], top[at - 1]] = [top[at - 1], top[at]];
        at--;
      }
    }
  }
  return { ...alternative(tokenizer, id, lp[id]), top: top.map((t) => alternative(tokenizer, t, lp[t])) };
}

/**
 * Starts every choice of `job` on the engine and resolves when all are done. Validation errors
 * throw synchronously, before anything is streamed. Stop strings end a choice early (its sequence
 * is aborted so its KV is freed at once); `signal` (the client going away) aborts them all.
 */
export function runCompletion(
  deps: { engine: Engine; tokenizer: Tokenizer },
  trace: RequestTrace,
  job: CompletionJob,
  signal: AbortSignal,
  onEvent?: (event: ChoiceEvent) => void,
): Promise<CompletionOutcome> {
  const { engine, tokenizer } = deps;
  // Aborted when the client goes away or when one choice fails: every choice's KV is freed.
  const cancelAll = new AbortController();
  const onClientGone = () => cancelAll.abort();
  signal.addEventListener("abort", onClientGone, { once: true });
  const startChoice = (index: number): Promise<ChoiceResult> => {
    const decoder = tokenizer.createStreamDecoder();
    const stops = new StopStringFilter(job.stop);
    const abort = new AbortController();
    const onAbort = () => abort.abort();
    cancelAll.signal.addEventListener("abort", onAbort, { once: true });
    const logprobs: TokenLogprob[] = [];
    let completionTokens = 0;
    const emit = (text: string, tokenLogprobs: TokenLogprob[]) => {
      if (text.length > 0 || tokenLogprobs.length > 0) onEvent?.({ kind: "text", index, text, logprobs: tokenLogprobs });
    };
    const generation = engine.generate(
      trace.bind(
        {
          promptIds: job.promptIds,
          maxTokens: job.maxTokens,
          sampling: job.sampling,
          seed: job.seed === undefined ? undefined : (job.seed + index) >>> 0,
          stopTokenIds: job.ignoreEos ? [] : undefined,
          cacheSalt: job.cacheSalt,
          adapter: job.adapter,
          returnLogits: job.topLogprobs !== undefined,
          signal: abort.signal,
          onToken: (id, logits) => {
            if (stops.stopped) return;
            completionTokens++;
            trace.tokenEmitted(index);
            const info = job.topLogprobs !== undefined && logits ? [tokenLogprob(tokenizer, id, logits, job.topLogprobs)] : [];
            logprobs.push(...info);
            emit(stops.push(decoder.push(id)), info);
            // Abort rather than wait for max_tokens: the sequence's KV is freed on every stage now.
            if (stops.stopped) abort.abort();
          },
        },
        index,
      ),
    );
    return generation.then(
      (result): ChoiceResult => {
        cancelAll.signal.removeEventListener("abort", onAbort);
        if (!stops.stopped) emit(stops.push(decoder.flush()), []);
        emit(stops.flush(), []);
        const finishReason: FinishReason = stops.stopped ? "stop" : result.finishReason;
        onEvent?.({ kind: "finish", index, finishReason });
        return { index, text: stops.text, finishReason, logprobs, completionTokens };
      },
      (error: Error): ChoiceResult => {
        cancelAll.signal.removeEventListener("abort", onAbort);
        if (!(error instanceof RequestAbortedError && stops.stopped && !cancelAll.signal.aborted)) throw error;
        onEvent?.({ kind: "finish", index, finishReason: "stop" });
        return { index, text: stops.text, finishReason: "stop", logprobs, completionTokens };
      },
    );
  };
  const choices: Promise<ChoiceResult>[] = [];
  try {
    for (let i = 0; i < job.n; i++) choices.push(startChoice(i));
  } catch (error) {
    cancelAll.abort();
    for (const c of choices) void c.catch(() => {});
    trace.finish("error", error as Error);
    throw error;
  }
  return Promise.all(choices).then(
    (results) => {
      signal.removeEventListener("abort", onClientGone);
      const completionTokens = results.reduce((sum, r) => sum + r.completionTokens, 0);
      trace.finish(results[0].finishReason);
      return { choices: results, promptTokens: job.promptIds.length, completionTokens };
    },
    (error: Error) => {
      signal.removeEventListener("abort", onClientGone);
      const clientGone = signal.aborted;
      cancelAll.abort();
      for (const c of choices) void c.catch(() => {});
      trace.finish(clientGone ? "abort" : "error", error);
      throw error;
    },
  );
}
