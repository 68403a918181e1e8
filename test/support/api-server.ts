import type { AddressInfo } from "node:net";
import { serve, type ServerType } from "@hono/node-server";
import OpenAI from "openai";
import { createHttpApi, type HttpApiOptions, type LocalCluster } from "@strata/coordinator";
import { loadTokenizer, type Tokenizer } from "@strata/model";

export interface ApiServer {
  /** http://127.0.0.1:<port> */
  url: string;
  client: OpenAI;
  tokenizer: Tokenizer;
  close(): Promise<void>;
}

/** The coordinator's HTTP API over `cluster` on a free loopback port, with an official OpenAI client for it. */
export async function startApiServer(
  cluster: LocalCluster,
  modelDir: string,
  opts: Partial<Omit<HttpApiOptions, "engine" | "tokenizer">> = {},
): Promise<ApiServer> {
  const tokenizer = await loadTokenizer(modelDir);
  const app = createHttpApi({
    engine: cluster.engine,
    tokenizer,
    modelName: "stories260K",
    pipeline: cluster.pipeline,
    telemetry: cluster.telemetry,
    adapters: cluster.adapters,
    ...opts,
  });
  const server: ServerType = await new Promise((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, () => resolve(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    tokenizer,
    // No retries: a 429 or 5xx must reach the test as it was sent.
    client: new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60_000 }),
    close: () =>
      new Promise<void>((resolve) => {
        if ("closeAllConnections" in server) server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Reads a server-sent-events body into its `data:` payloads. */
export async function readSse(response: Response): Promise<string[]> {
  const text = await response.text();
  return text
    .split("\n\n")
    .map((event) => event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n"))
    .filter((d) => d.length > 0);
}
