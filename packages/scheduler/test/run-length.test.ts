import { describe, expect, it } from "vitest";
import { decodeRunCap, MovingMean, Scheduler } from "../src/index.ts";

describe("decode run length", () => {
  const opts = { minSteps: 8, maxSteps: 32, targetMs: 25 };

  it("runs about targetMs long, between minSteps and maxSteps", () => {
    expect(decodeRunCap(undefined, opts)).toBe(8); // nothing measured yet
    expect(decodeRunCap(0.5, opts)).toBe(32); // fast steps: as long as allowed
    expect(decodeRunCap(2, opts)).toBe(12); // 12 steps of 2 ms fit in 25 ms
    expect(decodeRunCap(40, opts)).toBe(8); // slow steps: runs still save the round trip
    expect(decodeRunCap(1, { ...opts, maxSteps: 4 })).toBe(4); // a maximum below the minimum wins
  });

  it("caps a schedule's run below the configured longest", () => {
    let next = 100;
    const s = new Scheduler({ blockSizeTokens: 4, kvBlocks: 16, maxNumSeqs: 4, maxNumBatchedTokens: 64, maxDecodeSteps: 10, nextSeqId: () => next++ });
    s.add({ seqId: 1, arrival: 0, tokenIds: [1, 2, 3], promptLength: 3, maxLength: 40, extraKeys: [], computed: 0, startsOnStages: true, inFlight: false, state: "waiting", preemptions: 0 });
    s.complete(s.schedule().batch!, [7]);
    const run = s.schedule({ maxDecodeSteps: 3 }).batch!;
    expect(run.steps).toBe(3);
    // Blocks reserved for the 3 steps only: positions 3..5, two 4-token blocks.
    expect(run.chunks[0].blockIds).toHaveLength(2);
  });

  it("averages recent step times, the latest weighing most", () => {
    const mean = new MovingMean(0.5);
    expect(mean.value).toBeUndefined();
    mean.add(10);
    expect(mean.value).toBe(10);
    mean.add(20);
    expect(mean.value).toBe(15);
    mean.add(20);
    expect(mean.value).toBe(17.5);
  });
});
