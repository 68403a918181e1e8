import http from "k6/http";
import { check } from "k6";
import { Counter, Trend } from "k6/metrics";
import type { Options } from "k6/options";
import type { Scenario } from "../scenarios.ts";

// Shared by steady.ts, ramp.ts and spike.ts. Run one with `k6 run loadtest/k6/steady.ts`
// (k6 >= 0.57 runs TypeScript); BASE_URL defaults to the local coordinator.

const BASE_URL = __ENV.BASE_URL ?? "http://127.0.0.1:8000";

// k6 reads whole responses, so over SSE the time to the first byte stands in for time to first
// token (the completions stream writes nothing before its first token).
const ttft = new Trend("strata_ttft", true);
const tpot = new Trend("strata_tpot", true);
const tokens = new Counter("strata_completion_tokens");
const errors = new Counter("strata_errors");

export function optionsFor(s: Scenario): Options {
  return {
    scenarios: {
      [s.name]: {
        executor: "ramping-vus",
        startVUs: s.startVus,
        stages: s.stages.map((st) => ({ duration: `${st.durationS}s`, target: st.targetVus })),
        gracefulRampDown: "5s",
      },
    },
    thresholds: { strata_errors: ["count<1"] },
  };
}

interface UsageChunk {
  usage?: { completion_tokens: number } | null;
}

export function iteration(s: Scenario): void {
  const res = http.post(`${BASE_URL}/v1/completions`, JSON.stringify({ ...s.request, stream: true, stream_options: { include_usage: true } }), {
    headers: { "Content-Type": "application/json" },
    timeout: "120s",
  });
  const ok = check(res, { "status is 200": (r) => r.status === 200 });
  if (!ok || typeof res.body !== "string") {
    errors.add(1);
    return;
  }
  let completion = 0;
  for (const line of res.body.split("\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const chunk = JSON.parse(line.slice(6)) as UsageChunk;
    if (chunk.usage) completion = chunk.usage.completion_tokens;
  }
  tokens.add(completion);
  ttft.add(res.timings.waiting);
  if (completion > 1) tpot.add(res.timings.receiving / (completion - 1));
}
