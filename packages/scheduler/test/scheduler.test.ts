import { describe, expect, it } from "vitest";
import { NO_BLOCK } from "@strata/kv";
import { Scheduler, SchedulerCapacityError, type SchedulerOptions, type SchedulerSequence } from "../src/index.ts";

let arrival = 0;
function seq(seqId: number, prompt: number[], maxNew = 8, salt?: string): SchedulerSequence {
  return {
    seqId,
    arrival: arrival++,
    tokenIds: [...prompt],
    promptLength: prompt.length,
    maxLength: prompt.length + maxNew,
    extraKeys: salt ? [{ kind: "salt", value: salt }] : [],
    computed: 0,
    startsOnStages: true,
    inFlight: false,
    state: "waiting",
    preemptions: 0,
  };
}

function scheduler(opts: Partial<SchedulerOptions> = {}): Scheduler {
  let next = 1000;
  return new Scheduler({ blockSizeTokens: 4, kvBlocks: 16, maxNumSeqs: 8, maxNumBatchedTokens: 64, nextSeqId: () => next++, ...opts });
}

const range = (n: number, from = 10) => Array.from({ length: n }, (_, i) => from + i);

describe("Scheduler", () => {
  it("runs decode-only batches several steps at once, within each sequence's length and the free blocks", () => {
    const s = scheduler({ maxDecodeSteps: 5 });
    const a = seq(1, range(3), 8);
    const b = seq(2, range(2), 3);
    s.add(a);
    s.add(b);
    const prefill = s.schedule().batch!;
    expect(prefill.steps).toBe(1); // prompts are not decode runs
    s.complete(prefill, [50, 60]);
    // b may generate 3 tokens in all and has 1: the run is 2 steps, for both.
    const run = s.schedule().batch!;
    expect(run.steps).toBe(2);
    expect(run.chunks.map((c) => [c.startPosition, c.tokenIds])).toEqual([
      [3, [50]],
      [2, [60]],
    ]);
    // Blocks (4 tokens each) cover both steps' positions: a 3..4, b 2..3.
    expect(run.chunks.map((c) => c.blockIds.length)).toEqual([2, 1]);
    s.complete(run, [51, 61], 0);
    expect(a.inFlight).toBe(true); // still in the run
    expect(s.schedule().batch).toBeNull();
    expect([a.computed, a.tokenIds.at(-1)]).toEqual([4, 51]);
    s.complete(run, [52, 62], 1);
    expect([a.inFlight, a.computed, a.tokenIds.slice(3)]).toEqual([false, 5, [50, 51, 52]]);
    expect(b.tokenIds.slice(2)).toEqual([60, 61, 62]);
  });

  it("steps one at a time for single-step sequences, prompt chunks, and when the run's blocks are not free", () => {
    const s = scheduler({ maxDecodeSteps: 4, kvBlocks: 3 });
    const a = seq(1, range(4), 8);
    s.add(a);
    s.complete(s.schedule().batch!, [50]);
    // a needs blocks up to position 8 for 4 steps: 3 blocks, all there is. Fine alone.
    const run = s.schedule().batch!;
    expect(run.steps).toBe(4);
    for (let step = 0; step < 4; step++) s.complete(run, [51 + step], step);
    expect([a.inFlight, a.computed, a.tokenIds.slice(4)]).toEqual([false, 8, [50, 51, 52, 53, 54]]);
    const single = seq(2, range(2), 8);
    single.singleStep = true;
    const s2 = scheduler({ maxDecodeSteps: 4 });
    s2.add(single);
    s2.complete(s2.schedule().batch!, [7]);
    expect(s2.schedule().batch!.steps).toBe(1);
    // A sliding window frees blocks as a sequence advances, which a run's fixed tables cannot follow.
    const windowed = scheduler({ maxDecodeSteps: 4, slidingWindowTokens: 8 });
    const w = seq(5, range(3), 8);
    windowed.add(w);
    windowed.complete(windowed.schedule().batch!, [9]);
    expect(windowed.schedule().batch!.steps).toBe(1);
    // Someone waiting for a seat: step once, so it joins at the next step rather than after a run.
    const busy = scheduler({ maxDecodeSteps: 4, maxNumBatchedTokens: 1 });
    const first = seq(6, range(1), 8);
    busy.add(first);
    const alone = busy.schedule().batch!;
    expect(alone.steps).toBe(4); // nobody waiting: a run
    for (let i = 0; i < 4; i++) busy.complete(alone, [20 + i], i);
    busy.add(seq(7, range(1), 8));
    const step = busy.schedule().batch!;
    expect(step.chunks.map((c) => c.seqId)).toEqual([6]); // the token budget leaves the newcomer waiting
    expect(step.steps).toBe(1);
    // Not enough blocks for a run of 4 beside another sequence: one step.
    const s3 = scheduler({ maxDecodeSteps: 4, kvBlocks: 3 });
    const x = seq(3, range(3), 5);
    const y = seq(4, range(3), 5);
    s3.add(x);
    s3.add(y);
    s3.complete(s3.schedule().batch!, [8, 9]);
    expect(s3.schedule().batch!.steps).toBe(1);
  });

  it("splits a long prompt over steps (chunked prefill) and samples only at its end", () => {
    const s = scheduler({ maxPrefillChunkTokens: 4 });
    const a = seq(1, range(10));
    s.add(a);
    const first = s.schedule().batch!;
    expect(first.chunks.map((c) => [c.startPosition, c.tokenIds.length, c.sample, c.newSequence])).toEqual([[0, 4, false, true]]);
    expect(first.chunks[0].blockIds).toHaveLength(1);
    expect(s.schedule().batch).toBeNull(); // a is in flight
    s.complete(first, [undefined]);
    const second = s.schedule().batch!;
    expect(second.chunks.map((c) => [c.startPosition, c.tokenIds.length, c.sample, c.newSequence])).toEqual([[4, 4, false, false]]);
    s.complete(second, [undefined]);
    const third = s.schedule().batch!;
    expect(third.chunks.map((c) => [c.startPosition, c.tokenIds.length, c.sample])).toEqual([[8, 2, true]]);
    expect(third.chunks[0].blockIds).toHaveLength(3);
    s.complete(third, [77]);
    expect(a.tokenIds.at(-1)).toBe(77);
    const decode = s.schedule().batch!;
    expect(decode.chunks.map((c) => [c.startPosition, c.tokenIds])).toEqual([[10, [77]]]);
  });

  it("puts decodes first and respects the token budget and sequence cap", () => {
    const s = scheduler({ maxNumBatchedTokens: 6, maxNumSeqs: 2 });
    const a = seq(1, range(3));
    s.add(a);
    const b1 = s.schedule().batch!;
    s.complete(b1, [5]);
    const b = seq(2, range(8));
    const c = seq(3, range(2));
    s.add(b);
    s.add(c);
    const mixed = s.schedule().batch!;
    // a's decode (1 token), then b's prompt up to the budget; c waits for the sequence cap.
    expect(mixed.chunks.map((ch) => [ch.seqId, ch.tokenIds.length])).toEqual([[1, 1], [2, 5]]);
    expect(s.numWaiting).toBe(1);
  });

  it("admits by KV blocks and preempts the latest arrival, which returns under a fresh id", () => {
    const s = scheduler({ kvBlocks: 4, enablePrefixCaching: false });
    const a = seq(1, range(8), 4); // 2 blocks, grows to 3
    const b = seq(2, range(8, 50), 4); // 2 blocks
    s.add(a);
    s.add(b);
    const first = s.schedule().batch!;
    expect(first.chunks.map((c) => c.seqId)).toEqual([1, 2]);
    s.complete(first, [90, 91]); // both at 9 tokens: the 9th needs a third block, the pool is full
    const next = s.schedule();
    expect(next.preempted.map((p) => [p.evictedSeqId, p.seq.seqId])).toEqual([[2, 1000]]);
    expect(next.batch!.chunks.map((c) => [c.seqId, c.startPosition])).toEqual([[1, 8]]);
    expect(b.state).toBe("waiting");
    expect(b.computed).toBe(0);
    expect(b.tokenIds).toEqual([...range(8, 50), 91]); // keeps what it generated
    expect(s.stats().preemptions).toBe(1);
    s.complete(next.batch!, [92]);
    s.finish(a);
    // b recomputes its prompt and generated token under the new id, as a new sequence.
    const again = s.schedule().batch!;
    expect(again.chunks.map((c) => [c.seqId, c.startPosition, c.tokenIds.length, c.newSequence, c.sample])).toEqual([[1000, 0, 9, true, true]]);
  });

  it("shares cached prefix blocks, and never across salts", () => {
    const s = scheduler();
    const prompt = range(13); // 3 full blocks + 1 token
    const a = seq(1, prompt);
    s.add(a);
    const first = s.schedule().batch!;
    s.complete(first, [1]);
    const b = seq(2, prompt);
    const c = seq(3, prompt, 8, "tenant-c");
    s.add(b);
    s.add(c);
    const batch = s.schedule().batch!;
    const chunkOf = (id: number) => batch.chunks.find((ch) => ch.seqId === id)!;
    expect(chunkOf(2).startPosition).toBe(12); // only the last prompt token is computed
    expect(chunkOf(2).newSequence).toBe(true);
    expect(chunkOf(2).blockIds.slice(0, 3)).toEqual(first.chunks[0].blockIds.slice(0, 3));
    expect(chunkOf(3).startPosition).toBe(0);
    expect(chunkOf(3).blockIds.slice(0, 3).filter((id) => first.chunks[0].blockIds.includes(id))).toEqual([]);
    expect(s.stats().prefixHitTokens).toBe(12);
  });

  it("a prompt whose cached prefix the batch being formed writes waits for the next batch, which shares it", () => {
    const s = scheduler();
    const prompt = range(9); // 2 full blocks + 1 token
    const [a, b, c] = [seq(1, prompt), seq(2, prompt), seq(3, range(5, 90))];
    for (const x of [a, b, c]) s.add(x);
    // a's chunk fills blocks that are hashed as it is scheduled, but no stage has written them
    // while this batch gathers its past: b must not read them, nor compute them again beside a.
    const batch = s.schedule().batch!;
    expect(batch.chunks.map((ch) => [ch.seqId, ch.startPosition, ch.tokenIds.length])).toEqual([[1, 0, 9]]);
    expect(s.numWaiting).toBe(2);
    // The next batch, sent after it (a still in flight), shares them; c waited behind b.
    const next = s.schedule().batch!;
    expect(next.chunks.map((ch) => [ch.seqId, ch.startPosition, ch.tokenIds.length])).toEqual([
      [2, 8, 1],
      [3, 0, 5],
    ]);
    expect(next.chunks[0].blockIds.slice(0, 2)).toEqual(batch.chunks[0].blockIds.slice(0, 2));
    expect(s.stats().prefixHitTokens).toBe(8);
  });

  it("a finished sequence's blocks filled during a decode run are cached for a prompt that continues it", () => {
    const s = scheduler({ maxDecodeSteps: 8 });
    const a = seq(1, range(3), 8); // 3 prompt tokens + 8 new, blocks of 4: [4,8) fills inside the run
    s.add(a);
    const prefill = s.schedule().batch!;
    s.complete(prefill, [50]);
    const run = s.schedule().batch!;
    expect(run.steps).toBe(7); // the rest of its 8 tokens in one run, blocks reserved at its start
    for (let step = 0; step < 7; step++) s.complete(run, [51 + step], step);
    expect(a.tokenIds).toHaveLength(11);
    expect(a.computed).toBe(10); // the last token sampled was never fed back
    s.finish(a);

    // The next turn: the whole conversation so far, then more.
    const b = seq(2, [...a.tokenIds, 99]);
    s.add(b);
    const batch = s.schedule().batch!;
    expect(batch.chunks[0].startPosition).toBe(8); // blocks [0,4) and [4,8) matched; [8,12) was never full
    expect(batch.chunks[0].blockIds.slice(0, 2)).toEqual(run.chunks[0].blockIds.slice(0, 2));
  });

  it("a sequence whose last batch failed adds no hashes when it finishes", () => {
    const s = scheduler({ maxDecodeSteps: 8 });
    const a = seq(1, range(3), 8);
    s.add(a);
    s.complete(s.schedule().batch!, [50]);
    const run = s.schedule().batch!;
    for (let step = 0; step < 7; step++) s.complete(run, [51 + step], step);
    s.finish(a, false);
    const b = seq(2, [...a.tokenIds, 99]);
    s.add(b);
    // Only the first block was hashed (at the run's reservation, from the prompt and first token).
    expect(s.schedule().batch!.chunks[0].startPosition).toBe(4);
  });

  it("a failed batch drops every cached hash", () => {
    const s = scheduler();
    const a = seq(1, range(13));
    s.add(a);
    const first = s.schedule().batch!;
    s.fail(first);
    s.finish(a);
    const b = seq(2, range(13));
    s.add(b);
    expect(s.schedule().batch!.chunks[0].startPosition).toBe(0);
  });

  it("splits the running sequences over pipelineDepth micro-batches, a sequence in one at a time", () => {
    const s = scheduler({ pipelineDepth: 2 });
    const seqs = [1, 2, 3, 4, 5].map((id) => seq(id, range(2, id * 10)));
    for (const x of seqs) s.add(x);
    const first = s.schedule().batch!;
    const second = s.schedule().batch!;
    // 3 a micro-batch: too few to fill the pipeline in halves.
    expect(first.chunks.map((c) => c.seqId)).toEqual([1, 2, 3]);
    expect(second.chunks.map((c) => c.seqId)).toEqual([4, 5]);
    expect(s.schedule().batch).toBeNull();
    s.complete(first, [7, 7, 7]);
    expect(s.schedule().batch!.chunks.map((c) => c.seqId)).toEqual([1, 2, 3]);
  });

  it("fills an empty pipeline in micro-batches of half the size, then splits a burst evenly", () => {
    const burst = (depth: number) => {
      const s = scheduler({ pipelineDepth: depth, kvBlocks: 256, maxNumSeqs: 64, maxNumBatchedTokens: 1024 });
      for (let id = 1; id <= 32; id++) s.add(seq(id, range(16, id * 100)));
      return s;
    };
    const s = burst(2);
    const a = s.schedule().batch!;
    const b = s.schedule().batch!;
    expect([a.chunks.length, b.chunks.length]).toEqual([8, 8]);
    s.complete(a, a.chunks.map(() => 1));
    const a2 = s.schedule().batch!;
    // a's 8 decode; 8 more prompts join: 32 / 2 a micro-batch.
    expect(a2.chunks.filter((c) => c.tokenIds.length === 1)).toHaveLength(8);
    expect(a2.chunks).toHaveLength(16);
    s.complete(b, b.chunks.map(() => 1));
    expect(s.schedule().batch!.chunks).toHaveLength(16);
    // One micro-batch at a time: the whole burst at once.
    expect(burst(1).schedule().batch!.chunks).toHaveLength(32);
  });

  it("frees blocks that fall wholly outside the sliding window as a sequence advances", () => {
    const s = scheduler({ slidingWindowTokens: 6, enablePrefixCaching: false });
    const a = seq(1, range(12), 8);
    s.add(a);
    const prefill = s.schedule().batch!;
    s.complete(prefill, [5]); // next query at 12 sees keys 7..12: block 0 (0-3) is out, block 1 (4-7) is not
    const decode = s.schedule().batch!;
    expect(decode.chunks[0].blockIds[0]).toBe(NO_BLOCK);
    expect(decode.chunks[0].blockIds.slice(1).every((b) => b !== NO_BLOCK)).toBe(true);
    expect(s.stats().blocksUsed).toBe(3);
    s.complete(decode, [6]); // next query at 13 sees 8..13: block 1 goes too
    expect(s.schedule().batch!.chunks[0].blockIds.slice(0, 2)).toEqual([NO_BLOCK, NO_BLOCK]);
    expect(s.stats().blocksUsed).toBe(2);
    s.finish(a);
    expect(s.stats().blocksUsed).toBe(0);
  });

  it("contiguous allocator: reserves consecutive blocks for the whole length up front, no sharing", () => {
    const s = scheduler({ kvAllocator: "contiguous", kvBlocks: 8 });
    const a = seq(1, range(5), 7); // 12 positions: blocks 0-2
    const b = seq(2, range(5), 7); // same prompt: no prefix hit, blocks 3-5
    const c = seq(3, range(5), 7); // 3 more blocks do not fit in the 2 left
    for (const x of [a, b, c]) s.add(x);
    const batch = s.schedule().batch!;
    expect(batch.chunks.map((ch) => [ch.seqId, ch.blockIds])).toEqual([[1, [0, 1]], [2, [3, 4]]]);
    expect(s.stats().blocksUsed).toBe(6);
    expect(s.numWaiting).toBe(1);
    s.complete(batch, [9, 9]);
    s.finish(a);
    expect(s.schedule().batch!.chunks.map((ch) => [ch.seqId, ch.blockIds])).toEqual([[2, [3, 4]], [3, [0, 1]]]);
  });

  it("after a stage restart, running sequences recompute under fresh ids and the prefix cache is empty", () => {
    const s = scheduler();
    const a = seq(1, range(13));
    s.add(a);
    s.complete(s.schedule().batch!, [4]);
    const preempted = s.restartAll();
    expect(preempted.map((p) => [p.evictedSeqId, p.seq.seqId])).toEqual([[1, 1000]]);
    const again = s.schedule().batch!;
    expect(again.chunks.map((c) => [c.seqId, c.startPosition, c.tokenIds.length, c.newSequence])).toEqual([[1000, 0, 14, true]]);
    expect(s.stats().prefixHitTokens).toBe(0);
  });

  it("a sequence whose batch was lost recomputes under a fresh id from the tokens it has, counted apart from preemptions", () => {
    const s = scheduler({ maxDecodeSteps: 4 });
    const a = seq(1, range(5), 8);
    const b = seq(2, range(3), 8);
    s.add(a);
    s.add(b);
    s.complete(s.schedule().batch!, [70, 80]);
    const run = s.schedule().batch!;
    expect(run.steps).toBe(4);
    // Two steps of the run came back, then a stage went down with the rest.
    s.complete(run, [71, 81], 0);
    s.complete(run, [72, 82], 1);
    expect(s.recomputeLost(a)).toBeUndefined(); // still in flight: not yet
    s.fail(run);
    const lost = [a, b].map((x) => s.recomputeLost(x)!);
    expect(lost.map((p) => [p.evictedSeqId, p.seq.seqId])).toEqual([[1, 1000], [2, 1001]]);
    expect(s.recomputeLost(a)).toBeUndefined(); // waiting now: nothing more to do
    expect(s.stats()).toMatchObject({ preemptions: 0, lostBatchRecomputes: 2, blocksUsed: 0, running: 0, waiting: 2 });
    // Each comes back as one prefill of its prompt and the tokens it kept, oldest first.
    const again = s.schedule().batch!;
    expect(again.chunks.map((c) => [c.seqId, c.startPosition, c.tokenIds, c.newSequence, c.sample])).toEqual([
      [1000, 0, [...range(5), 70, 71, 72], true, true],
      [1001, 0, [...range(3), 80, 81, 82], true, true],
    ]);
  });

  it("rejects a request that could never fit", () => {
    const s = scheduler({ kvBlocks: 2 });
    expect(() => s.add(seq(1, range(6), 4))).toThrow(SchedulerCapacityError);
  });
});
