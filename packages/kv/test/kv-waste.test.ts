import { describe, expect, it } from "vitest";
import { simulateKvWaste, type KvWasteRequest } from "../src/index.ts";

// Three requests queued at step 0 on a pool of 8 tokens (2 blocks of 4). Traced by hand:
//
// paged (no watermark):
//   step 0: admit R0 (3 tok, 1 block), R1 (4 tok, 1 block); R2 waits. reserved 8, used 7
//   step 1: R0 grows to 4; R1 needs a 2nd block: none free, R1 (latest) is preempted with 1
//           token generated and waits to recompute 5 tokens (2 blocks). reserved 4, used 4
//   step 2: R0 grows to 5 (2nd block). reserved 8, used 5; R0 finishes (3 tokens)
//   step 3: R1 readmitted with 5 tokens. reserved 8, used 5; R1 finishes (2 tokens)
//   step 4: R2 admitted, nobody waits: not measured; finishes
// contiguous (reserve prompt + maxTokens: R0 7, R1 8, R2 2):
//   step 0: R0 admitted; R1 needs 8. reserved 7, used 3
//   step 1: used 4; step 2: used 5, R0 finishes
//   step 3: R1 admitted (8). reserved 8, used 4; step 4: used 5, R1 finishes
//   step 5: R2 admitted, not measured
const REQUESTS: KvWasteRequest[] = [
  { arrivalStep: 0, promptLen: 3, outputLen: 3, maxTokens: 4 },
  { arrivalStep: 0, promptLen: 4, outputLen: 2, maxTokens: 4 },
  { arrivalStep: 0, promptLen: 1, outputLen: 1, maxTokens: 1 },
];

describe("simulateKvWaste", () => {
  it("paged: counts partly filled blocks as waste and preempts the latest sequence when one cannot grow", () => {
    const r = simulateKvWaste({ allocator: "paged", totalTokens: 8, blockSizeTokens: 4, requests: REQUESTS, watermarkBlocks: 0 });
    expect(r).toEqual({
      wastePct: (100 * (1 + 0 + 3 + 3)) / 4 / 8,
      reservedPct: (100 * (8 + 4 + 8 + 8)) / 4 / 8,
      usedPct: (100 * (7 + 4 + 5 + 5)) / 4 / 8,
      freePct: 100 - (100 * 28) / 4 / 8,
      meanAdmitted: (2 + 1 + 1 + 1) / 4,
      stepsMeasured: 4,
      stepsTotal: 5,
      preemptions: 1,
    });
  });

  it("contiguous: counts each reservation's unused tail as waste", () => {
    const r = simulateKvWaste({ allocator: "contiguous", totalTokens: 8, blockSizeTokens: 4, requests: REQUESTS });
    expect(r).toEqual({
      wastePct: (100 * (4 + 3 + 2 + 4 + 3)) / 5 / 8,
      reservedPct: (100 * (7 + 7 + 7 + 8 + 8)) / 5 / 8,
      usedPct: (100 * (3 + 4 + 5 + 4 + 5)) / 5 / 8,
      freePct: 100 - (100 * 37) / 5 / 8,
      meanAdmitted: 1,
      stepsMeasured: 5,
      stepsTotal: 6,
      preemptions: 0,
    });
  });

  it("skips warm-up steps", () => {
    const r = simulateKvWaste({ allocator: "paged", totalTokens: 8, blockSizeTokens: 4, requests: REQUESTS, watermarkBlocks: 0, warmupSteps: 2 });
    expect(r).toMatchObject({ wastePct: (100 * (3 + 3)) / 2 / 8, stepsMeasured: 2, meanAdmitted: 1 });
  });

  it("caps a contiguous reservation at the context", () => {
    // With a context of 6, R0 and R1 reserve 6 each instead of 7 and 8, so both fit in 12 tokens.
    const r = simulateKvWaste({ allocator: "contiguous", totalTokens: 12, blockSizeTokens: 4, requests: REQUESTS, contextTokens: 6 });
    // Step 0: R0 [0,6) and R1 [6,12) both fit; R2 waits. reserved 12, used 7.
    // Step 1: used 9; R1 finishes. Step 2: R2 admitted (2), nobody waits: not measured.
    expect(r).toMatchObject({ wastePct: (100 * (5 + 3)) / 2 / 12, meanAdmitted: 2, stepsMeasured: 2 });
  });

  it("keeps a watermark of free blocks at admission (default 1% of blocks, rounded up)", () => {
    const requests = Array.from({ length: 4 }, () => ({ arrivalStep: 0, promptLen: 4, outputLen: 1, maxTokens: 1 }));
    // 4 blocks, one 1-block request each; the default watermark of 1 block admits 3 per step.
    const r = simulateKvWaste({ allocator: "paged", totalTokens: 16, blockSizeTokens: 4, requests });
    expect(r).toMatchObject({ meanAdmitted: 3, stepsMeasured: 1, stepsTotal: 2, wastePct: 0 });
  });

  it("rejects requests that cannot ever run and measures nothing it cannot", () => {
    expect(() => simulateKvWaste({ allocator: "paged", totalTokens: 8, blockSizeTokens: 4, requests: [{ arrivalStep: 0, promptLen: 9, outputLen: 1, maxTokens: 1 }] })).toThrow(/more KV than the whole pool/);
    expect(() => simulateKvWaste({ allocator: "paged", totalTokens: 10, blockSizeTokens: 4, requests: REQUESTS })).toThrow(/multiple of blockSizeTokens/);
    expect(() => simulateKvWaste({ allocator: "paged", totalTokens: 8, blockSizeTokens: 4, requests: [{ arrivalStep: 0, promptLen: 1, outputLen: 2, maxTokens: 1 }] })).toThrow(/outputLen/);
    expect(() => simulateKvWaste({ allocator: "paged", totalTokens: 8, blockSizeTokens: 4, requests: REQUESTS, warmupSteps: 50 })).toThrow(/no step measured/);
  });
});
