import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { writeSyntheticModel } from "@strata/model";
import { CLI, runToExit, workersUsing, type Exited } from "./support/processes.ts";
import { loadGreedyOracle, useNats } from "./support/cluster.ts";

// `strata generate` end to end: real worker processes, the bundled model, one JSON line out.

const oracle = loadGreedyOracle();
const generatedIds = oracle.token_ids.slice(oracle.prompt_token_ids.length);
const nats = useNats();
beforeAll(nats.start);
afterAll(nats.stop);

interface GenerateJson {
  prompt_token_ids: number[];
  token_ids: number[];
  text: string;
  finish_reason: string;
  workers: number;
  partition: Array<[number, number]>;
  tokens_per_s: number;
}

function lastJsonLine(run: Exited): GenerateJson {
  if (run.code !== 0) throw new Error(`generate exited with ${run.code ?? run.signal}\nstderr:\n${run.stderr}`);
  const lines = run.stdout.trimEnd().split("\n");
  return JSON.parse(lines[lines.length - 1]) as GenerateJson;
}

function cli(...args: string[]): Promise<Exited> {
  return runToExit(process.execPath, ["--import", "tsx", CLI, ...args, "--nats-url", nats.url()]);
}

const STORY = ["--prompt", "Once upon a time", "--max-tokens", "60"];

describe("strata generate --json", () => {
  it("pnpm strata generate over 3 workers prints the greedy oracle", async () => {
    const run = await runToExit("pnpm", ["strata", "generate", "--workers", "3", ...STORY, "--temperature", "0", "--json", "--nats-url", nats.url()]);
    const out = lastJsonLine(run);
    expect(out.prompt_token_ids).toEqual([1, 403, 407, 261, 378]);
    expect(out.token_ids).toEqual(generatedIds);
    expect(out.text).toBe(oracle.text.slice(oracle.prompt.length));
    expect(out.finish_reason).toBe("length");
    expect(out.workers).toBe(3);
    expect(out.partition).toEqual([[0, 2], [2, 4], [4, 5]]);
    expect(out.tokens_per_s).toBeGreaterThan(0);
    expect(workersUsing(nats.url())).toEqual([]);
  });

  it("--partition sets the stages and gives the same ids", async () => {
    const out = lastJsonLine(await cli("generate", "--partition", "0-1,1-4,4-5", ...STORY, "--temperature", "0", "--json"));
    expect(out.workers).toBe(3);
    expect(out.partition).toEqual([[0, 1], [1, 4], [4, 5]]);
    expect(out.token_ids).toEqual(generatedIds);
    expect(out.finish_reason).toBe("length");
  });

  it("seeded sampling repeats exactly, whatever the partition", async () => {
    const sampled = ["generate", ...STORY, "--temperature", "0.8", "--seed", "7", "--json"];
    const a = lastJsonLine(await cli(...sampled, "--workers", "1"));
    const b = lastJsonLine(await cli(...sampled, "--workers", "2"));
    expect(a.partition).toEqual([[0, 5]]);
    expect(b.partition).toEqual([[0, 3], [3, 5]]);
    expect(a.token_ids.length).toBeGreaterThan(0);
    expect(b.token_ids).toEqual(a.token_ids);
    expect(b.text).toBe(a.text);
    // Temperature 0.8 over 60 tokens: not the greedy story.
    expect(a.token_ids).not.toEqual(generatedIds);
    expect(workersUsing(nats.url())).toEqual([]);
  });
});

describe("strata generate --plan-batch / --plan-context-tokens", () => {
  // A 4-layer model whose 4,096-word LM head reads as many bytes as ~7 of its layers' weights.
  const dir = mkdtempSync(join(tmpdir(), "strata-plan-"));
  beforeAll(() =>
    writeSyntheticModel(dir, { hiddenSize: 64, intermediateSize: 128, numLayers: 4, numHeads: 4, numKvHeads: 2, headDim: 16, vocabSize: 4096, maxPositionEmbeddings: 256 }, 3),
  );
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("balance the default partition for the load they describe", async () => {
    const args = ["generate", "--model", dir, "--workers", "2", "--prompt", "Hi", "--max-tokens", "4", "--temperature", "0", "--json"];
    const [short, long] = await Promise.all([
      cli(...args, "--plan-batch", "1", "--plan-context-tokens", "16"),
      cli(...args, "--plan-batch", "16", "--plan-context-tokens", "1024"),
    ]);
    // One short sequence: the head's weights are most of a step's bytes, so it gets a stage with
    // one layer. Sixteen sequences of 1,024 tokens: their past K/V outweigh the head, an even split.
    expect(lastJsonLine(short).partition).toEqual([[0, 3], [3, 4]]);
    expect(lastJsonLine(long).partition).toEqual([[0, 2], [2, 4]]);
    expect(lastJsonLine(short).token_ids).toEqual(lastJsonLine(long).token_ids);
    expect(workersUsing(nats.url())).toEqual([]);
  });

  it("count the KV cache's element size: an int8 cache reads a quarter of fp32's bytes", async () => {
    const args = ["generate", "--model", dir, "--workers", "2", "--prompt", "Hi", "--max-tokens", "4", "--temperature", "0", "--json", "--plan-batch", "16", "--plan-context-tokens", "512"];
    const [fp32, int8] = await Promise.all([cli(...args), cli(...args, "--kv-dtype", "int8")]);
    // 16 x 512 tokens of fp32 K/V outweigh the head's weights; a quarter of them do not.
    expect(lastJsonLine(fp32).partition).toEqual([[0, 2], [2, 4]]);
    expect(lastJsonLine(int8).partition).toEqual([[0, 3], [3, 4]]);
  });

  it("--plan-shared-prefix-tokens counts a shared system prompt's K/V once per micro-batch", async () => {
    // K/V 128 floats wide (2 KV heads of 64): split attention, which reads a shared past once.
    const wide = mkdtempSync(join(tmpdir(), "strata-plan-shared-"));
    try {
      writeSyntheticModel(wide, { hiddenSize: 128, intermediateSize: 256, numLayers: 4, numHeads: 2, numKvHeads: 2, headDim: 64, vocabSize: 8192, maxPositionEmbeddings: 256 }, 3);
      const args = ["generate", "--model", wide, "--workers", "2", "--prompt", "Hi", "--max-tokens", "4", "--temperature", "0", "--json", "--plan-batch", "16", "--plan-context-tokens", "1040"];
      const [own, shared] = await Promise.all([cli(...args), cli(...args, "--plan-shared-prefix-tokens", "1024")]);
      // 16 pasts of 1,040 tokens each outweigh the 8,192-word head: the even split. Behind a
      // shared 1,024-token prompt a layer reads its weights, that prompt once and 16 x 16 tokens
      // of each sequence's own, and the head (about two layers' reads) gets a stage with one layer.
      expect(lastJsonLine(own).partition).toEqual([[0, 2], [2, 4]]);
      expect(lastJsonLine(shared).partition).toEqual([[0, 3], [3, 4]]);
      expect(lastJsonLine(shared).token_ids).toEqual(lastJsonLine(own).token_ids);
    } finally {
      rmSync(wide, { recursive: true, force: true });
    }
  });

  it("--plan-shared-prefix-tokens says so where the model's attention cannot read a shared past once", async () => {
    // stories260K's K/V are 32 floats wide: fused attention, which gathers a shared past into
    // every sequence's, so the flag cannot change the plan; the run goes on with a message.
    const args = ["generate", "--workers", "2", "--prompt", "Hi", "--max-tokens", "4", "--temperature", "0", "--json", "--plan-context-tokens", "128"];
    const [plain, shared] = await Promise.all([cli(...args), cli(...args, "--plan-shared-prefix-tokens", "64")]);
    expect(shared.stderr).toMatch(/^planning without the shared prefix: this model's attention \(4 KV heads of 8\) gathers a shared past into every sequence's/m);
    expect(plain.stderr).not.toMatch(/shared prefix/);
    expect(lastJsonLine(shared).partition).toEqual(lastJsonLine(plain).partition);
    expect(lastJsonLine(shared).token_ids).toEqual(lastJsonLine(plain).token_ids);
  });

  it("refuse a load that is not a positive whole number, or a shared prefix longer than its context (exit 2)", async () => {
    const [batch, context, shared] = await Promise.all([
      cli("generate", "--plan-batch", "0", "--prompt", "Hi", "--max-tokens", "4"),
      cli("generate", "--plan-context-tokens", "1.5", "--prompt", "Hi", "--max-tokens", "4"),
      cli("generate", "--plan-context-tokens", "512", "--plan-shared-prefix-tokens", "513", "--prompt", "Hi", "--max-tokens", "4"),
    ]);
    expect(shared.code).toBe(2);
    expect(shared.stderr).toMatch(/^error: --plan-shared-prefix-tokens: 513 is more than the 512 tokens of context planned for/m);
    expect(batch.code).toBe(2);
    expect(batch.stderr).toMatch(/^error: --plan-batch: "0" is not a valid value/m);
    expect(context.code).toBe(2);
    expect(context.stderr).toMatch(/^error: --plan-context-tokens: "1.5" is not a valid value/m);
  });
});

describe("strata generate refuses bad input clearly", () => {
  it("a KV budget given both in bytes and as a memory fraction, or a fraction outside (0, 1], is a usage error (exit 2)", async () => {
    const [both, zero] = await Promise.all([
      cli("generate", "--kv-cache-bytes", "1000000", "--kv-memory-fraction", "0.1", "--prompt", "Hi", "--max-tokens", "4"),
      cli("generate", "--kv-memory-fraction", "0", "--prompt", "Hi", "--max-tokens", "4"),
    ]);
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/^error: --kv-cache-bytes and --kv-memory-fraction each set the KV budget: give one/m);
    expect(zero.code).toBe(2);
    expect(zero.stderr).toMatch(/^error: --kv-memory-fraction: "0" is not a valid value/m);
  });

  it("a partition that skips or overruns layers is a usage error (exit 2)", async () => {
    const [gap, overrun] = await Promise.all([
      cli("generate", "--partition", "0-2,3-5", "--prompt", "Hi", "--max-tokens", "4"),
      cli("generate", "--partition", "0-3,3-7", "--prompt", "Hi", "--max-tokens", "4"),
    ]);
    expect(gap.code).toBe(2);
    expect(gap.stderr).toMatch(/^error: --partition: .*\[3, 5\).*layer 2/m);
    expect(gap.stdout).toBe("");
    expect(overrun.code).toBe(2);
    expect(overrun.stderr).toMatch(/^error: --partition: .*5 layers/m);
  });

  it("a prompt past the context length fails before any worker starts", async () => {
    // About 540 tokens (the llama2.c tokenizer is quadratic in the text, so not much more).
    const longPrompt = "Once upon a time there was a very long story. ".repeat(36);
    const run = await cli("generate", "--prompt", longPrompt, "--max-tokens", "10", "--workers", "1");
    expect(run.code).not.toBe(0);
    expect(run.code).not.toBeNull();
    expect(run.stderr).toMatch(/^error: .*maximum context length is 512 tokens/m);
    // No worker was started (so none can be left behind): no load progress was printed.
    expect(run.stderr).not.toMatch(/loaded/);
    expect(workersUsing(nats.url())).toEqual([]);
  });
});
