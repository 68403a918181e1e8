// The load shapes, shared by the k6 scripts (k6/*.ts) and the Node harness (harness.ts), so both
// run the same scenarios. Plain data only: k6 runs this file too.

export interface Stage {
  /** Seconds to move linearly from the previous target to this one. */
  durationS: number;
  /** Virtual users (each sends one request at a time, back to back). */
  targetVus: number;
}

export interface Scenario {
  name: "steady" | "ramp" | "spike";
  description: string;
  startVus: number;
  stages: Stage[];
  /** Hard cap on requests started, whatever the stages say. */
  maxRequests: number;
  /** The body of every request (POST /v1/completions, streamed). */
  request: {
    prompt: string;
    max_tokens: number;
    temperature: number;
    /** vLLM's extension: fixed-length outputs make runs comparable. */
    ignore_eos: boolean;
  };
}

const request = { prompt: "Once upon a time", max_tokens: 64, temperature: 0.8, ignore_eos: true };

export const SCENARIOS: Scenario[] = [
  {
    name: "steady",
    description: "8 users for 20 s",
    startVus: 8,
    stages: [{ durationS: 20, targetVus: 8 }],
    maxRequests: 2000,
    request,
  },
  {
    name: "ramp",
    description: "0 to 16 users over 15 s, 16 for 10 s, down to 0 over 5 s",
    startVus: 0,
    stages: [
      { durationS: 15, targetVus: 16 },
      { durationS: 10, targetVus: 16 },
      { durationS: 5, targetVus: 0 },
    ],
    maxRequests: 3000,
    request,
  },
  {
    name: "spike",
    description: "2 users for 8 s, a jump to 32 for 6 s, back to 2 for 8 s",
    startVus: 2,
    stages: [
      { durationS: 8, targetVus: 2 },
      { durationS: 1, targetVus: 32 },
      { durationS: 6, targetVus: 32 },
      { durationS: 1, targetVus: 2 },
      { durationS: 7, targetVus: 2 },
    ],
    maxRequests: 3000,
    request,
  },
];

export function scenarioByName(name: string): Scenario | undefined {
  return SCENARIOS.find((s) => s.name === name);
}

export function totalDurationS(s: Scenario): number {
  return s.stages.reduce((sum, st) => sum + st.durationS, 0);
}

/** Virtual users wanted `t` seconds into the scenario (linear within each stage, as k6's ramping-vus). */
export function vusAt(s: Scenario, t: number): number {
  let from = s.startVus;
  let at = 0;
  for (const stage of s.stages) {
    if (t < at + stage.durationS) return Math.round(from + ((stage.targetVus - from) * (t - at)) / stage.durationS);
    at += stage.durationS;
    from = stage.targetVus;
  }
  return 0;
}
