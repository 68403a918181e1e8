import { readFileSync } from "node:fs";
import { expect } from "vitest";
import type { LocalCluster } from "@strata/coordinator";
import { startNatsServer, type NatsServerProcess } from "@strata/events";
import { BUNDLED_MODEL_DIR } from "@strata/model";

export interface GreedyOracle {
  prompt: string;
  steps: number;
  prompt_token_ids: number[];
  token_ids: number[];
  text: string;
}

export function loadGreedyOracle(dir = BUNDLED_MODEL_DIR): GreedyOracle {
  return JSON.parse(readFileSync(`${dir}/greedy.json`, "utf8")) as GreedyOracle;
}

/** One nats-server per test file: started before, killed after. */
export function useNats(): { url(): string; server(): NatsServerProcess; start(): Promise<void>; stop(): Promise<void> } {
  let nats: NatsServerProcess | undefined;
  return {
    url: () => nats!.url,
    server: () => nats!,
    start: async () => {
      nats = await startNatsServer();
    },
    stop: async () => {
      await nats?.stop();
    },
  };
}

export const GREEDY = { temperature: 0, topP: 1, topK: 0 };

/**
 * No leaks once traffic stops: every stage back to no block in use and no sequence (each block
 * free, or cached: still holding a finished sequence's KV), and nothing left in the engine.
 */
export async function expectNoBlocksHeld(cluster: LocalCluster): Promise<void> {
  expect(await cluster.waitForBlocksFreed(30_000)).toEqual(cluster.partition.map(() => 0));
  for (const d of await cluster.pipeline.describeAll()) {
    expect(d.seqIds).toEqual([]);
    expect(d.kv!.sequences).toBe(0);
    expect(d.kv!.blocksUsed).toBe(0);
    expect(d.kv!.blocksFree + d.kv!.blocksCached).toBe(d.kv!.blocksTotal);
  }
  expect(cluster.engine.numRunning).toBe(0);
  expect(cluster.engine.numWaiting).toBe(0);
}
