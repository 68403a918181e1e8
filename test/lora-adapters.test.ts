import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { BUNDLED_MODEL_DIR, loadLoraAdapter, mergeLora, openModel, referenceGenerateGreedy, toRotateHalfLayout, writeSyntheticLora, type ModelConfig, type StageWeights } from "@strata/model";
import { LocalCluster } from "@strata/coordinator";
import { loadGreedyOracle, useNats } from "./support/cluster.ts";
import { startApiServer, type ApiServer } from "./support/api-server.ts";
import { parsePrometheus } from "./support/prometheus.ts";

// Multi-tenant LoRA through the whole system: the official openai client names an adapter as
// `model`, 2 worker stages each apply their layers of it (unmerged, x @ W + x @ A @ B), and the
// tokens equal greedy decoding of the reference forward pass on merged weights W + B·A.

const oracle = loadGreedyOracle();
const PROMPT_IDS = oracle.prompt_token_ids;
const MAX_TOKENS = 24;
const ADAPTER = "stories-tenant-a";
const nats = useNats();
const tmp = mkdtempSync(join(tmpdir(), "strata-lora-api-"));
const adapterDir = join(tmp, "tenant-a");
let cluster: LocalCluster;
let api: ApiServer;
let client: OpenAI;
let config: ModelConfig;
let base: StageWeights;

/** Generated ids of the reference on `weights`, as the API returns them (stops before an end token). */
function referenceIds(weights: StageWeights): number[] {
  return referenceGenerateGreedy(weights.config, weights, PROMPT_IDS, PROMPT_IDS.length - 1 + MAX_TOKENS).slice(PROMPT_IDS.length);
}

async function complete(model: string, extra: Partial<OpenAI.CompletionCreateParamsNonStreaming> = {}): Promise<string> {
  const r = await client.completions.create({ model, prompt: PROMPT_IDS, max_tokens: MAX_TOKENS, temperature: 0, ...extra });
  return r.choices[0].text;
}

async function post(path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(`${api.url}${path}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

beforeAll(async () => {
  await nats.start();
  const source = await openModel(BUNDLED_MODEL_DIR);
  config = source.config;
  base = toRotateHalfLayout(await source.loadStage({ layerStart: 0, layerEnd: config.numLayers, withEmbedding: true, withHead: true }));
  await source.close();
  await writeSyntheticLora(adapterDir, config, { rank: 8, alpha: 16, seed: 5, std: 1 });
  cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url(), inProcessWorkers: true, loras: [{ name: ADAPTER, path: adapterDir }], maxLoraRank: 8 });
  api = await startApiServer(cluster, BUNDLED_MODEL_DIR);
  client = api.client;
});

afterAll(async () => {
  await api?.close();
  await cluster?.stop();
  await nats.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe("LoRA adapters as `model`", () => {
  it("GET /v1/models lists the base model and the adapter, with its parent", async () => {
    const list: OpenAI.Models.Model[] = [];
    for await (const m of client.models.list()) list.push(m);
    expect(list.map((m) => m.id)).toEqual(["stories260K", ADAPTER]);
    expect((list[1] as OpenAI.Models.Model & { parent?: string }).parent).toBe("stories260K");
  });

  it("an adapter's completion equals the reference on merged weights; the base model's is unchanged", async () => {
    const adapter = await loadLoraAdapter(adapterDir, config, { layerStart: 0, layerEnd: config.numLayers });
    const wantAdapter = api.tokenizer.decode(referenceIds(mergeLora(base, adapter)));
    const wantBase = api.tokenizer.decode(referenceIds(base));
    expect(wantAdapter).not.toBe(wantBase);
    // Concurrent: base and adapter sequences share micro-batches (one session.run per adapter).
    const [gotBase, gotAdapter, gotAdapterAgain] = await Promise.all([complete("stories260K"), complete(ADAPTER), complete(ADAPTER)]);
    expect(gotAdapter).toBe(wantAdapter);
    expect(gotAdapterAgain).toBe(wantAdapter);
    expect(gotBase).toBe(wantBase);
  });

  it("streams and chats with an adapter", async () => {
    const want = await complete(ADAPTER);
    const stream = await client.completions.create({ model: ADAPTER, prompt: PROMPT_IDS, max_tokens: MAX_TOKENS, temperature: 0, stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? "";
    expect(text).toBe(want);
    const chat = await client.chat.completions.create({ model: ADAPTER, messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 8, temperature: 0 });
    expect(chat.model).toBe(ADAPTER);
    expect(chat.choices[0].message.content?.length).toBeGreaterThan(0);
  });

  it("base and adapter requests with the same prompt never share cached KV blocks", async () => {
    // 3 full 16-token blocks of prompt, so a match would be visible.
    const prompt = [...PROMPT_IDS, ...Array.from({ length: 48 }, (_, i) => 32 + ((i * 7) % 400))];
    const hits = () => cluster.engine.stats().prefixHitTokens;
    await client.completions.create({ model: "stories260K", prompt, max_tokens: 2, temperature: 0 });
    const afterBase = hits();
    await client.completions.create({ model: ADAPTER, prompt, max_tokens: 2, temperature: 0 });
    expect(hits()).toBe(afterBase);
    await client.completions.create({ model: ADAPTER, prompt, max_tokens: 2, temperature: 0 });
    expect(hits()).toBeGreaterThanOrEqual(afterBase + 48);
  });
});

describe("runtime adapter loading", () => {
  it("loads an adapter over HTTP, serves it, unloads it on every worker, and a reload gets a new generation", async () => {
    const want = await complete(ADAPTER);
    const loaded = await post("/v1/load_lora_adapter", { lora_name: "tenant-b", lora_path: adapterDir });
    expect(loaded.status).toBe(200);
    expect(loaded.json).toMatchObject({ id: "tenant-b", rank: 8 });
    const describe = async () => (await cluster.pipeline.describeAll()).map((d) => d.adapters.map((a) => a.adapterId).sort());
    expect(await describe()).toEqual([[ADAPTER, "tenant-b"].sort(), [ADAPTER, "tenant-b"].sort()]);
    expect(await complete("tenant-b")).toBe(want);
    // Two full blocks of prompt, cached under tenant-b's first generation.
    const prompt = [...PROMPT_IDS, ...Array.from({ length: 32 }, (_, i) => 40 + i)];
    const hits = () => cluster.engine.stats().prefixHitTokens;
    await client.completions.create({ model: "tenant-b", prompt, max_tokens: 1, temperature: 0 });

    const again = await post("/v1/load_lora_adapter", { lora_name: "tenant-b", lora_path: adapterDir });
    expect(again.status).toBe(400);
    expect((again.json.error as { code: string }).code).toBe("adapter_already_loaded");

    expect((await post("/v1/unload_lora_adapter", { lora_name: "tenant-b" })).status).toBe(200);
    expect(await describe()).toEqual([[ADAPTER], [ADAPTER]]);
    const gone = await complete("tenant-b").catch((e: unknown) => e);
    expect(gone).toBeInstanceOf(OpenAI.NotFoundError);

    const reloaded = await post("/v1/load_lora_adapter", { lora_name: "tenant-b", lora_path: adapterDir });
    expect(reloaded.json.generation).toBeGreaterThan(loaded.json.generation as number);
    // No stale KV after the switch: the new generation finds none of the old one's blocks.
    const before = hits();
    await client.completions.create({ model: "tenant-b", prompt, max_tokens: 1, temperature: 0 });
    expect(hits()).toBe(before);
    expect(await complete("tenant-b")).toBe(want);
    expect((await post("/v1/unload_lora_adapter", { lora_name: "tenant-b" })).status).toBe(200);

    const metrics = parsePrometheus(await (await fetch(`${api.url}/metrics`)).text());
    expect(metrics.value("strata_lora_adapter_loads_total")).toBe(3); // tenant-a at start, tenant-b twice
    expect(metrics.value("strata_lora_adapters_resident")).toBe(1);
  });

  it("an unload waits for the adapter's running requests, which finish on it, and answers as the last one ends", async () => {
    const want = await complete(ADAPTER);
    expect((await post("/v1/load_lora_adapter", { lora_name: "tenant-c", lora_path: adapterDir })).status).toBe(200);
    // A stream that is mid-generation when the unload comes.
    const stream = await client.completions.create({ model: "tenant-c", prompt: PROMPT_IDS, max_tokens: MAX_TOKENS, temperature: 0, stream: true });
    const chunks = stream[Symbol.asyncIterator]();
    let text = (await chunks.next()).value!.choices[0]?.text ?? "";
    let streamEnded = 0;
    const rest = (async () => {
      for (let c = await chunks.next(); !c.done; c = await chunks.next()) text += c.value.choices[0]?.text ?? "";
      streamEnded = performance.now();
    })();
    const unloaded = post("/v1/unload_lora_adapter", { lora_name: "tenant-c" }).then((r) => ({ status: r.status, at: performance.now() }));
    const [{ status, at }] = await Promise.all([unloaded, rest]);
    expect(status).toBe(200);
    expect(text).toBe(want);
    expect(at).toBeGreaterThanOrEqual(streamEnded);
    expect(cluster.engine.requestsWithAdapter("tenant-c")).toBe(0);
    expect((await cluster.pipeline.describeAll()).map((d) => d.adapters.map((a) => a.adapterId))).toEqual([[ADAPTER], [ADAPTER]]);
  });

  it("refuses a bad adapter folder, a rank above the limit, a bad name and an unknown unload, and keeps serving", async () => {
    const missing = await post("/v1/load_lora_adapter", { lora_name: "broken", lora_path: join(tmp, "nope") });
    expect(missing.status).toBe(400);
    expect((missing.json.error as { code: string; message: string }).code).toBe("adapter_load_failed");
    expect((missing.json.error as { message: string }).message).toMatch(/adapter_config\.json/);

    const bigDir = join(tmp, "rank-32");
    await writeSyntheticLora(bigDir, config, { rank: 32, seed: 6 });
    const big = await post("/v1/load_lora_adapter", { lora_name: "big", lora_path: bigDir });
    expect(big.status).toBe(400);
    expect((big.json.error as { message: string }).message).toMatch(/rank 32 exceeds this stage's max LoRA rank 8/);

    expect((await post("/v1/load_lora_adapter", { lora_name: "bad name!", lora_path: adapterDir })).status).toBe(400);
    expect((await post("/v1/load_lora_adapter", { lora_name: "dotted.name", lora_path: adapterDir })).status).toBe(400);
    expect((await post("/v1/load_lora_adapter", { lora_name: 7 })).status).toBe(400);
    expect((await post("/v1/unload_lora_adapter", { lora_name: "never-loaded" })).status).toBe(404);

    // Nothing half-loaded stays behind, and requests still work.
    expect((await cluster.pipeline.describeAll()).map((d) => d.adapters.map((a) => a.adapterId))).toEqual([[ADAPTER], [ADAPTER]]);
    expect(await complete(ADAPTER)).toBe(await complete(ADAPTER));
  });
});
