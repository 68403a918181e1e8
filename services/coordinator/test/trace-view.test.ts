import { describe, expect, it } from "vitest";
import { TraceLog, renderWaterfall, type StepRecord } from "../src/trace-view.ts";

function step(n: number, requestIds: string[], at: number): StepRecord {
  // 1 ms to stage 0, 2 ms computing, 1 ms hop, 4 ms on stage 1, 1 ms back.
  return {
    step: n,
    batchId: n,
    sentUnixMs: at,
    receivedUnixMs: at + 9,
    seqIds: [n],
    requestIds,
    tokens: 1,
    prefillTokens: 0,
    decodeTokens: 1,
    stages: [
      { stageIndex: 0, workerId: "worker-0", receivedUnixMs: at + 1, startedUnixMs: at + 1, sentUnixMs: at + 3, kvBlocksUsed: 2, kvBlocksTotal: 10, hiddenBytesSent: 256 },
      { stageIndex: 1, workerId: "worker-1", receivedUnixMs: at + 4, startedUnixMs: at + 4, sentUnixMs: at + 8, kvBlocksUsed: 2, kvBlocksTotal: 10, hiddenBytesSent: 0 },
    ],
  };
}

describe("TraceLog", () => {
  it("keeps the most recent steps and requests only", () => {
    const log = new TraceLog(4, 2);
    for (let i = 1; i <= 6; i++) log.addStep(step(i, [i % 2 ? "a" : "b"], i * 10));
    expect(log.allSteps().map((s) => s.step)).toEqual([3, 4, 5, 6]);
    expect(log.stepsOf("a").map((s) => s.step)).toEqual([3, 5]);
    for (const id of ["r1", "r2", "r3"]) log.addRequest({ requestId: id, startUnixMs: 0, promptTokens: 1, completionTokens: 0 });
    expect(log.request("r1")).toBeUndefined();
    expect(log.recentRequests().map((r) => r.requestId)).toEqual(["r3", "r2"]);
  });
});

describe("renderWaterfall", () => {
  it("splits each step into hops, queueing and per-stage compute, and names where the time went", () => {
    const text = renderWaterfall(
      { requestId: "cmpl-1", startUnixMs: 100, firstTokenUnixMs: 110, endUnixMs: 130, promptTokens: 3, completionTokens: 2, finishReason: "length" },
      [step(7, ["cmpl-1"], 100), step(8, ["cmpl-1"], 115)],
      18,
    );
    expect(text).toContain("request cmpl-1");
    expect(text).toContain("e2e 30.00 ms, ttft 10.00 ms, 2 steps kept");
    expect(text).toContain("stages: 0 = worker-0, 1 = worker-1");
    // 9 ms over 18 columns: 2 per ms.
    expect(text).toContain("|>>0000--11111111<<|");
    expect(text).toMatch(/stage 1 compute\s+4\.00 ms/);
    expect(text).toMatch(/hop coordinator->0\s+1\.00 ms/);
    expect(text).toContain("most of it in stage 1 compute (4.00 ms)");
  });

  it("says so when the ring no longer holds the request's steps", () => {
    expect(renderWaterfall({ requestId: "old", startUnixMs: 0, promptTokens: 1, completionTokens: 0 }, [])).toContain("no steps of this request are left");
  });
});
