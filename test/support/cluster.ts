import { readFileSync } from "node:fs";
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
