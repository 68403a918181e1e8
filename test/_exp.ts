import { startNatsServer } from "@strata/events";
import { LocalCluster, createHttpApi } from "@strata/coordinator";
import { BUNDLED_MODEL_DIR, loadTokenizer } from "@strata/model";
import { serve } from "@hono/node-server";
import { createServer } from "node:http";
import { streamCompletion } from "/work/main/loadtest/client.ts";
const sink = createServer((req, res) => { req.resume(); req.on("end", () => res.writeHead(200).end()); });
await new Promise<void>((r) => sink.listen(0, "127.0.0.1", () => r()));
const tracesUrl = process.env.TRACE ? `http://127.0.0.1:${(sink.address() as any).port}/v1/traces` : undefined;
const nats = await startNatsServer();
const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 2, natsUrl: nats.url, tracesUrl });
const app = createHttpApi({ engine: cluster.engine, tokenizer: await loadTokenizer(BUNDLED_MODEL_DIR), modelName: "s", telemetry: cluster.telemetry });
const server: any = await new Promise((r) => { const s = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, () => r(s)); });
const url = `http://127.0.0.1:${server.address().port}`;
const rs = [];
for (let i = 0; i < 6; i++) {
  const t0 = performance.now();
  await Promise.all(Array.from({ length: 16 }, () => streamCompletion(url, { prompt: [1], max_tokens: 64, temperature: 0, ignore_eos: true })));
  rs.push((1024 / ((performance.now() - t0) / 1000)).toFixed(0));
  await cluster.waitForBlocksFreed();
}
console.log(process.env.TRACE ? "on" : "off", rs.join(" "));
server.close(); await cluster.stop(); await nats.stop(); sink.close(); process.exit(0);
