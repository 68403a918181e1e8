import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import { ChatTemplate, LocalCluster } from "@strata/coordinator";
import { loadGreedyOracle, useNats } from "./support/cluster.ts";
import { startApiServer, type ApiServer } from "./support/api-server.ts";

// The OpenAI-compatible API, driven by the official `openai` client against a real cluster
// (3 in-process workers, a real nats-server, the bundled stories260K) over loopback HTTP.

const MODEL = "stories260K";
const oracle = loadGreedyOracle();
const PROMPT = oracle.prompt;
const GREEDY_TOKENS = oracle.steps - oracle.prompt_token_ids.length + 1;
const nats = useNats();
let cluster: LocalCluster;
let api: ApiServer;
let client: OpenAI;
let greedyText: string;

beforeAll(async () => {
  await nats.start();
  cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url(), inProcessWorkers: true });
  api = await startApiServer(cluster, BUNDLED_MODEL_DIR, { chatTemplate: await ChatTemplate.load(BUNDLED_MODEL_DIR) });
  client = api.client;
  greedyText = api.tokenizer.decode(oracle.token_ids.slice(oracle.prompt_token_ids.length));
});

afterAll(async () => {
  await api?.close();
  await cluster?.stop();
  await nats.stop();
});

async function streamText(stream: AsyncIterable<OpenAI.Completions.Completion>): Promise<{ text: string; finish?: string | null; usage?: OpenAI.CompletionUsage | null; chunks: number }> {
  let text = "";
  let finish: string | null | undefined;
  let usage: OpenAI.CompletionUsage | null | undefined;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, finish, usage, chunks };
}

describe("POST /v1/completions", () => {
  it("greedy text equals the published greedy output, with usage", async () => {
    const res = await client.completions.create({ model: "stories260K", prompt: PROMPT, max_tokens: GREEDY_TOKENS, temperature: 0 });
    expect(res.object).toBe("text_completion");
    expect(res.choices).toHaveLength(1);
    expect(res.choices[0].text).toBe(greedyText);
    expect(PROMPT + res.choices[0].text).toBe(oracle.text);
    expect(res.choices[0].finish_reason).toBe("length");
    expect(res.usage).toEqual({ prompt_tokens: oracle.prompt_token_ids.length, completion_tokens: GREEDY_TOKENS, total_tokens: oracle.prompt_token_ids.length + GREEDY_TOKENS });
  });

  it("streams the same text, ending with a usage chunk when include_usage is set", async () => {
    const stream = await client.completions.create({
      model: MODEL,
      prompt: PROMPT,
      max_tokens: GREEDY_TOKENS,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    const got = await streamText(stream);
    expect(got.text).toBe(greedyText);
    expect(got.finish).toBe("length");
    expect(got.chunks).toBeGreaterThan(10);
    expect(got.usage).toEqual({ prompt_tokens: 5, completion_tokens: GREEDY_TOKENS, total_tokens: 5 + GREEDY_TOKENS });
  });

  it("stops at a stop string, trims it, and streams the same trimmed text", async () => {
    const cut = greedyText.indexOf(" Lily");
    expect(cut).toBeGreaterThan(0);
    const res = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: GREEDY_TOKENS, temperature: 0, stop: [" Lily", "zzz"] });
    expect(res.choices[0].text).toBe(greedyText.slice(0, cut));
    expect(res.choices[0].finish_reason).toBe("stop");
    expect(res.usage!.completion_tokens).toBeLessThan(GREEDY_TOKENS);
    const streamed = await streamText(await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: GREEDY_TOKENS, temperature: 0, stop: " Lily", stream: true }));
    expect(streamed.text).toBe(greedyText.slice(0, cut));
    expect(streamed.finish).toBe("stop");
  });

  it("n samples independent sequences, reproducibly with a seed", async () => {
    // top_k is vLLM's extension: not in the client's types, sent as given.
    const ask = () =>
      client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 24, temperature: 1, top_p: 0.95, top_k: 40, seed: 7, n: 3 } as OpenAI.CompletionCreateParamsNonStreaming);
    const a = await ask();
    const b = await ask();
    expect(a.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(a.choices.map((c) => c.text)).toEqual(b.choices.map((c) => c.text));
    expect(new Set(a.choices.map((c) => c.text)).size).toBeGreaterThan(1);
    expect(a.usage!.prompt_tokens).toBe(5);
    expect(a.usage!.completion_tokens).toBeGreaterThanOrEqual(3);
  });

  it("returns logprobs: the greedy token is the most likely one, and the tokens spell the text", async () => {
    const res = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 12, temperature: 0, logprobs: 3 });
    const lp = res.choices[0].logprobs!;
    expect(lp.tokens!.join("")).toBe(res.choices[0].text);
    expect(lp.token_logprobs).toHaveLength(12);
    lp.top_logprobs!.forEach((top, i) => {
      const values = Object.values(top);
      expect(values.length).toBeGreaterThanOrEqual(1);
      expect(lp.token_logprobs![i]).toBeCloseTo(Math.max(...values), 5);
      for (const v of values) expect(v).toBeLessThanOrEqual(0);
    });
    expect(lp.text_offset![0]).toBe(0);
  });

  it("cache_salt: a repeated long prompt hits the prefix cache only under the same salt", async () => {
    const prompt = Array.from({ length: 40 }, (_, i) => 1 + ((i * 13) % 500)); // 2 full blocks of 16 and more
    prompt[0] = 1;
    const hits = () => cluster.engine.stats().prefixHitTokens;
    const body = (salt: string) => ({ model: MODEL, prompt, max_tokens: 4, temperature: 0, cache_salt: salt }) as OpenAI.CompletionCreateParamsNonStreaming;
    const first = await client.completions.create(body("tenant-a"));
    const before = hits();
    const other = await client.completions.create(body("tenant-b"));
    expect(hits()).toBe(before);
    const same = await client.completions.create(body("tenant-a"));
    expect(hits() - before).toBe(32);
    expect(same.choices[0].text).toBe(first.choices[0].text);
    expect(other.choices[0].text).toBe(first.choices[0].text);
  });

  it("accepts a prompt as token ids", async () => {
    const res = await client.completions.create({ model: MODEL, prompt: oracle.prompt_token_ids, max_tokens: GREEDY_TOKENS, temperature: 0 });
    expect(res.choices[0].text).toBe(greedyText);
  });
});

describe("POST /v1/chat/completions", () => {
  const messages: OpenAI.Chat.ChatCompletionMessageParam[] = [
    { role: "system", content: "A short story." },
    { role: "user", content: "Once upon a time" },
  ];

  it("renders the model's chat template and answers; greedy equals the completion of the rendered prompt", async () => {
    const template = await ChatTemplate.load(BUNDLED_MODEL_DIR);
    expect(template.fromModel).toBe(false);
    const rendered = template.render([
      { role: "system", content: "A short story." },
      { role: "user", content: "Once upon a time" },
    ]);
    expect(rendered).toBe("A short story.\n\nUser: Once upon a time\nAssistant:");
    const chat = await client.chat.completions.create({ model: "stories260K", messages, max_tokens: 40, temperature: 0 });
    expect(chat.object).toBe("chat.completion");
    expect(chat.choices[0].message.role).toBe("assistant");
    const completion = await client.completions.create({ model: MODEL, prompt: rendered, max_tokens: 40, temperature: 0 });
    expect(chat.choices[0].message.content).toBe(completion.choices[0].text);
    expect(chat.usage!.prompt_tokens).toBe(api.tokenizer.encode(rendered).length);
    expect(chat.usage!.completion_tokens).toBe(completion.usage!.completion_tokens);
  });

  it("streams role, content deltas, finish and usage; the text equals the non-streamed one", async () => {
    const whole = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 40, temperature: 0 });
    const stream = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let role: string | undefined;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      for (const c of chunk.choices) {
        role ??= c.delta.role;
        text += c.delta.content ?? "";
        if (c.finish_reason) finish = c.finish_reason;
      }
      if (chunk.usage) usage = chunk.usage;
    }
    expect(role).toBe("assistant");
    expect(text).toBe(whole.choices[0].message.content);
    expect(finish).toBe(whole.choices[0].finish_reason);
    expect(usage).toEqual(whole.usage);
  });

  it("returns chat logprobs with top_logprobs", async () => {
    const res = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2 });
    const content = res.choices[0].logprobs!.content!;
    expect(content).toHaveLength(res.usage!.completion_tokens);
    expect(content.map((t) => t.token).join("")).toBe(res.choices[0].message.content);
    for (const t of content) {
      expect(t.top_logprobs).toHaveLength(2);
      expect(t.logprob).toBeCloseTo(t.top_logprobs[0].logprob, 5);
    }
  });
});

describe("models", () => {
  it("GET /v1/models lists the base model (adapters: see lora-adapters.test.ts)", async () => {
    const ids: string[] = [];
    for await (const m of client.models.list()) ids.push(m.id);
    expect(ids).toEqual(["stories260K"]);
    expect((await client.models.retrieve("stories260K")).id).toBe("stories260K");
  });

  it("an unknown model is a 404 in OpenAI's error shape", async () => {
    const error = await client.completions.create({ model: "no-such-model", prompt: PROMPT, max_tokens: 4 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OpenAI.NotFoundError);
    const e = error as InstanceType<typeof OpenAI.NotFoundError>;
    expect(e.status).toBe(404);
    expect(e.code).toBe("model_not_found");
    expect(e.param).toBe("model");
  });

  it("loading an adapter at runtime on a server started without LoRA support is a clear 400", async () => {
    const res = await fetch(`${api.url}/v1/load_lora_adapter`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ lora_name: "a", lora_path: "/tmp" }) });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string; message: string } }).error).toMatchObject({ code: "lora_disabled" });
  });
});

describe("health and readiness", () => {
  it("GET /health answers while the process lives; GET /ready checks every stage", async () => {
    expect(await (await fetch(`${api.url}/health`)).json()).toEqual({ status: "ok" });
    const ready = await fetch(`${api.url}/ready`);
    expect(ready.status).toBe(200);
    const body = (await ready.json()) as { status: string; stages: Array<{ serving: boolean; loaded: boolean }> };
    expect(body.status).toBe("ready");
    expect(body.stages).toHaveLength(3);
    expect(body.stages.every((s) => s.serving && s.loaded)).toBe(true);
  });
});
