import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { StopStringFilter } from "../src/stop-strings.ts";

describe("StopStringFilter", () => {
  it("holds back only what could start a stop string, and cuts before the match", () => {
    const f = new StopStringFilter(["\nUser:", "END"]);
    expect(f.push("Hello")).toBe("Hello");
    expect(f.push(" wor")).toBe(" wor");
    expect(f.push("ld\nU")).toBe("ld");
    expect(f.push("s")).toBe("");
    expect(f.push("ually")).toBe("\nUsually");
    expect(f.push(" E")).toBe(" ");
    expect(f.push("NDING")).toBe("");
    expect(f.stopped).toBe(true);
    expect(f.text).toBe("Hello world\nUsually ");
    expect(f.push("more")).toBe("");
    expect(f.flush()).toBe("");
  });

  it("flushes held-back text at the end of generation", () => {
    const f = new StopStringFilter(["STOP"]);
    expect(f.push("ab ST")).toBe("ab ");
    expect(f.flush()).toBe("ST");
    expect(f.text).toBe("ab ST");
  });

  it("passes everything through without stop strings", () => {
    const f = new StopStringFilter([]);
    expect(f.push("abc")).toBe("abc");
    expect(f.flush()).toBe("");
  });

  it("whatever the split of the text into pieces, the output is the text up to the first match", () => {
    fc.assert(
      fc.property(fc.string({ unit: fc.constantFrom("a", "b", "c") }), fc.array(fc.nat(), { maxLength: 8 }), fc.constantFrom(["ab"], ["cab", "bb"], ["c"]), (text, cuts, stops) => {
        const points = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b);
        const pieces: string[] = [];
        let at = 0;
        for (const p of [...points, text.length]) {
          pieces.push(text.slice(at, p));
          at = p;
        }
        const f = new StopStringFilter(stops);
        let out = "";
        for (const p of pieces) out += f.push(p);
        out += f.flush();
        const matches = stops.map((s) => text.indexOf(s)).filter((i) => i >= 0);
        const expected = matches.length > 0 ? text.slice(0, Math.min(...matches)) : text;
        expect(out).toBe(expected);
        expect(f.text).toBe(expected);
      }),
    );
  });
});
