import { describe, expect, it } from "vitest";
import { AUTO_STREAM_MAX_INTERVAL_MS, autoStreamIntervalMs, ChoiceCoalescer } from "../src/choice-coalescer.ts";
import type { ChoiceEvent, TokenLogprob } from "../src/completions.ts";

const nextPass = () => new Promise((resolve) => setImmediate(resolve));
const lp = (token: string): TokenLogprob => ({ token, bytes: [...Buffer.from(token)], logprob: -1, top: [] });

describe("ChoiceCoalescer", () => {
  it("merges a choice's text events of one event-loop pass into one, logprobs in order", async () => {
    const sent: ChoiceEvent[] = [];
    const c = new ChoiceCoalescer((e) => sent.push(e));
    c.push({ kind: "text", index: 0, text: "Once", logprobs: [lp("Once")] });
    c.push({ kind: "text", index: 0, text: " upon", logprobs: [lp(" upon")] });
    expect(sent).toEqual([]);
    await nextPass();
    expect(sent).toEqual([{ kind: "text", index: 0, text: "Once upon", logprobs: [lp("Once"), lp(" upon")] }]);
    c.push({ kind: "text", index: 0, text: " a", logprobs: [] });
    await nextPass();
    expect(sent.map((e) => (e.kind === "text" ? e.text : e.kind))).toEqual(["Once upon", " a"]);
  });

  it("keeps choices apart and sends them in choice order", async () => {
    const sent: ChoiceEvent[] = [];
    const c = new ChoiceCoalescer((e) => sent.push(e));
    c.push({ kind: "text", index: 1, text: "b", logprobs: [] });
    c.push({ kind: "text", index: 0, text: "a", logprobs: [] });
    c.push({ kind: "text", index: 1, text: "c", logprobs: [] });
    await nextPass();
    expect(sent).toEqual([
      { kind: "text", index: 0, text: "a", logprobs: [] },
      { kind: "text", index: 1, text: "bc", logprobs: [] },
    ]);
  });

  it("a finish sends its choice's held text first, at once, and leaves the others held", async () => {
    const sent: ChoiceEvent[] = [];
    const c = new ChoiceCoalescer((e) => sent.push(e));
    c.push({ kind: "text", index: 0, text: "x", logprobs: [] });
    c.push({ kind: "text", index: 1, text: "y", logprobs: [] });
    c.push({ kind: "finish", index: 0, finishReason: "stop" });
    expect(sent).toEqual([
      { kind: "text", index: 0, text: "x", logprobs: [] },
      { kind: "finish", index: 0, finishReason: "stop" },
    ]);
    await nextPass();
    expect(sent.at(-1)).toEqual({ kind: "text", index: 1, text: "y", logprobs: [] });
  });

  it("does not grow the caller's logprobs array", async () => {
    const first = [lp("a")];
    const c = new ChoiceCoalescer(() => {});
    c.push({ kind: "text", index: 0, text: "a", logprobs: first });
    c.push({ kind: "text", index: 0, text: "b", logprobs: [lp("b")] });
    await nextPass();
    expect(first).toHaveLength(1);
  });

  it("with an interval: the first text goes at the next pass, later text waits out the interval merged, a finish goes at once", async () => {
    const sent: { at: number; event: ChoiceEvent }[] = [];
    const c = new ChoiceCoalescer((event) => sent.push({ at: performance.now(), event }), 40);
    const text = (t: string): ChoiceEvent => ({ kind: "text", index: 0, text: t, logprobs: [] });
    c.push(text("Once"));
    await nextPass();
    expect(sent.map((s) => s.event)).toEqual([text("Once")]); // the first token is never held
    c.push(text(" upon"));
    await nextPass();
    c.push(text(" a"));
    await new Promise((r) => setTimeout(r, 10));
    expect(sent).toHaveLength(1); // within the interval: held
    await new Promise((r) => setTimeout(r, 60));
    expect(sent.map((s) => s.event)).toEqual([text("Once"), text(" upon a")]);
    expect(sent[1].at - sent[0].at).toBeGreaterThanOrEqual(39);
    c.push(text(" time"));
    c.push({ kind: "finish", index: 0, finishReason: "length" });
    // The finish flushes its choice's text with it, without waiting for the interval.
    expect(sent.slice(2).map((s) => s.event)).toEqual([text(" time"), { kind: "finish", index: 0, finishReason: "length" }]);
  });

  it("an interval given as a function is asked at each flush, so it can follow the load", async () => {
    let interval = 0;
    const sent: number[] = [];
    const c = new ChoiceCoalescer(() => sent.push(performance.now()), () => interval);
    const text: ChoiceEvent = { kind: "text", index: 0, text: "t", logprobs: [] };
    c.push(text);
    await nextPass();
    c.push(text);
    await nextPass();
    expect(sent).toHaveLength(2); // interval 0: every pass
    interval = 40;
    c.push(text);
    await new Promise((r) => setTimeout(r, 10));
    expect(sent).toHaveLength(2); // now held
    await new Promise((r) => setTimeout(r, 50));
    expect(sent).toHaveLength(3);
    expect(sent[2] - sent[1]).toBeGreaterThanOrEqual(39);
  });
});

describe("autoStreamIntervalMs", () => {
  it("grows with the streams open, so the chunks written per second stay bounded, up to a cap", () => {
    expect(autoStreamIntervalMs(0)).toBe(0);
    expect(autoStreamIntervalMs(1)).toBe(1.5);
    expect(autoStreamIntervalMs(8)).toBe(12);
    expect(autoStreamIntervalMs(16)).toBe(24);
    expect(autoStreamIntervalMs(1000)).toBe(AUTO_STREAM_MAX_INTERVAL_MS);
    // Chunks per second over all streams, each flushing as often as allowed: at most 1000 / 1.5.
    for (const open of [1, 4, 16]) expect(open * (1000 / autoStreamIntervalMs(open))).toBeLessThanOrEqual(1000 / 1.5 + 1e-9);
  });
});
