// `pnpm loadtest`: the k6 scenarios (steady, ramp, spike) run from Node, for machines without k6.
// Starts a local cluster and the HTTP API on loopback (or targets --url, loopback only), runs each
// scenario for its fixed time and request cap, and prints throughput, TTFT and TPOT p50/p99 and errors.
import type { AddressInfo } from "node:net";
import { setMaxListeners } from "node:events";
import { performance } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { serve, type ServerType } from "@hono/node-server";
import { ChatTemplate, createHttpApi, LocalCluster } from "@strata/coordinator";
import { BUNDLED_MODEL_DIR, loadTokenizer } from "@strata/model";
import { assertLoopback, percentile, streamCompletion, type StreamResult } from "./client.ts";
import { SCENARIOS, totalDurationS, vusAt, type Scenario } from "./scenarios.ts";

const USAGE = `usage: pnpm loadtest [--url URL] [--scenario steady|ramp|spike] [--time-scale F] [--max-requests N] [--workers N] [--json]

  --url URL          a running coordinator on loopback (default: start a local cluster of the bundled model)
  --scenario NAME    run one scenario (default: all three)
  --time-scale F     multiply every stage's duration by F (default 1; 0.25 for a quick look)
  --max-requests N   cap on requests per scenario (default: the scenario's own cap)
  --workers N        worker processes of the local cluster (default 2)
  --json             print one JSON object with every figure on the last line
`;

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    scenario: { type: "string" },
    "time-scale": { type: "string", default: "1" },
    "max-requests": { type: "string" },
    workers: { type: "string", default: "2" },
    json: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});

interface ScenarioReport {
  requests: number;
  ok: number;
  errors: Record<string, number>;
  seconds: number;
  reqPerS: number;
  tokPerS: number;
  ttftP50Ms: number;
  ttftP99Ms: number;
  tpotP50Ms: number;
  tpotP99Ms: number;
  e2eP50Ms: number;
  e2eP99Ms: number;
}

/** Virtual users as k6's ramping-vus: each sends one request at a time while the stages want it. */
async function runScenario(baseUrl: string, scenario: Scenario, timeScale: number, maxRequests: number): Promise<ScenarioReport> {
  const durationMs = totalDurationS(scenario) * timeScale * 1000;
  const started = performance.now();
  const elapsedS = () => (performance.now() - started) / 1000 / timeScale;
  const results: StreamResult[] = [];
  let sent = 0;
  const stop = new AbortController();
  // One signal for every virtual user's requests: as many listeners as users, by design.
  setMaxListeners(0, stop.signal);
  const running = new Set<Promise<void>>();
  const vu = async (id: number) => {
    while (performance.now() - started < durationMs && sent < maxRequests && id < vusAt(scenario, elapsedS())) {
      sent++;
      results.push(await streamCompletion(baseUrl, scenario.request, stop.signal));
    }
  };
  const active = new Set<number>();
  while (performance.now() - started < durationMs && sent < maxRequests) {
    const wanted = vusAt(scenario, elapsedS());
    for (let id = 0; id < wanted; id++) {
      if (active.has(id)) continue;
      active.add(id);
      const p = vu(id).finally(() => {
        active.delete(id);
        running.delete(p);
      });
      running.add(p);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  // In-flight requests finish, but never past a grace period.
  const grace = setTimeout(() => stop.abort(), 30_000);
  await Promise.all(running);
  clearTimeout(grace);
  const seconds = (performance.now() - started) / 1000;
  const ok = results.filter((r) => r.ok);
  const errors: Record<string, number> = {};
  for (const r of results.filter((r) => !r.ok)) {
    const key = r.status === 0 ? "connection" : r.status === 200 ? "mid-stream" : String(r.status);
    errors[key] = (errors[key] ?? 0) + 1;
  }
  const ttft = ok.flatMap((r) => (r.ttftMs === undefined ? [] : [r.ttftMs]));
  const tpot = ok.flatMap((r) => (r.tpotMs === undefined ? [] : [r.tpotMs]));
  const e2e = ok.map((r) => r.e2eMs);
  return {
    requests: results.length,
    ok: ok.length,
    errors,
    seconds,
    reqPerS: ok.length / seconds,
    tokPerS: ok.reduce((sum, r) => sum + r.completionTokens, 0) / seconds,
    ttftP50Ms: percentile(ttft, 50),
    ttftP99Ms: percentile(ttft, 99),
    tpotP50Ms: percentile(tpot, 50),
    tpotP99Ms: percentile(tpot, 99),
    e2eP50Ms: percentile(e2e, 50),
    e2eP99Ms: percentile(e2e, 99),
  };
}

async function startLocal(workers: number): Promise<{ url: string; stop(): Promise<void> }> {
  process.stderr.write(`starting a local cluster: bundled stories260K over ${workers} worker processes...\n`);
  const cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers, log: (line) => process.stderr.write(`${line}\n`) });
  const app = createHttpApi({
    engine: cluster.engine,
    tokenizer: await loadTokenizer(BUNDLED_MODEL_DIR),
    modelName: "stories260K",
    chatTemplate: await ChatTemplate.load(BUNDLED_MODEL_DIR),
    pipeline: cluster.pipeline,
    telemetry: cluster.telemetry,
  });
  const server: ServerType = await new Promise((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: "127.0.0.1", port: 0 }, () => resolve(s));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await cluster.stop();
    },
  };
}

const ms = (v: number) => (Number.isFinite(v) ? `${v.toFixed(1)} ms` : "-");

async function main(): Promise<void> {
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const timeScale = Number(values["time-scale"]);
  if (!(timeScale > 0 && timeScale <= 10)) throw new Error(`--time-scale must be in (0, 10], got ${values["time-scale"]}`);
  const scenarios = values.scenario ? SCENARIOS.filter((s) => s.name === values.scenario) : SCENARIOS;
  if (scenarios.length === 0) throw new Error(`unknown scenario "${values.scenario}"; known: ${SCENARIOS.map((s) => s.name).join(", ")}`);
  const capArg = values["max-requests"] === undefined ? undefined : Number(values["max-requests"]);
  if (capArg !== undefined && !(Number.isInteger(capArg) && capArg > 0)) throw new Error(`--max-requests must be a positive integer`);
  if (values.url) assertLoopback(values.url);
  const local = values.url ? undefined : await startLocal(Number(values.workers));
  const baseUrl = (values.url ?? local!.url).replace(/\/+$/, "");
  const figures: Record<string, number> = {};
  let failed = false;
  try {
    for (const s of scenarios) {
      const cap = Math.min(capArg ?? s.maxRequests, s.maxRequests);
      console.log(`\n== ${s.name}: ${s.description}${timeScale !== 1 ? ` (time x${timeScale})` : ""}; at most ${cap} requests`);
      console.log(`   each request: "${s.request.prompt}", ${s.request.max_tokens} tokens (ignore_eos), temperature ${s.request.temperature}, streamed, against ${baseUrl}`);
      const r = await runScenario(baseUrl, s, timeScale, cap);
      const errorText = Object.keys(r.errors).length === 0 ? "0 errors" : `errors ${Object.entries(r.errors).map(([k, v]) => `${k}: ${v}`).join(", ")}`;
      console.log(`   ${r.ok} of ${r.requests} requests ok, ${errorText}; ${r.seconds.toFixed(1)} s`);
      console.log(`   throughput ${r.reqPerS.toFixed(2)} req/s, ${r.tokPerS.toFixed(0)} tok/s`);
      console.log(`   TTFT p50 ${ms(r.ttftP50Ms)}  p99 ${ms(r.ttftP99Ms)}   TPOT p50 ${ms(r.tpotP50Ms)}  p99 ${ms(r.tpotP99Ms)}   e2e p50 ${ms(r.e2eP50Ms)}  p99 ${ms(r.e2eP99Ms)}`);
      if (r.ok < r.requests) failed = true;
      Object.assign(figures, {
        [`${s.name}_req_s`]: r.reqPerS,
        [`${s.name}_tok_s`]: r.tokPerS,
        [`${s.name}_ttft_p50_ms`]: r.ttftP50Ms,
        [`${s.name}_ttft_p99_ms`]: r.ttftP99Ms,
        [`${s.name}_tpot_p50_ms`]: r.tpotP50Ms,
        [`${s.name}_tpot_p99_ms`]: r.tpotP99Ms,
        [`${s.name}_errors`]: r.requests - r.ok,
      });
    }
  } finally {
    await local?.stop();
  }
  if (values.json) console.log(JSON.stringify(Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, Number.isFinite(v) ? Number(v.toPrecision(4)) : null]))));
  process.exitCode = failed ? 1 : 0;
}

try {
  await main();
} catch (error) {
  process.stderr.write(`error: ${(error as Error).message}\n\n${USAGE}`);
  process.exitCode = 2;
}
// A stray handle (a gRPC channel, a timer) must not keep the harness alive after it is done.
process.exit(process.exitCode ?? 0);
