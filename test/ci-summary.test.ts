import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { REPO_ROOT } from "./support/processes.ts";

// .ci/summarize.mjs turns vitest's JSON report into the line CI reads. These reports have the
// shape vitest 4 writes; a test left "pending" (its file "passed") is what a test process that
// died mid-run leaves behind, as stop 22's CI run did.

const dir = mkdtempSync(join(tmpdir(), "strata-ci-summary-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

type Status = "passed" | "failed" | "pending" | "skipped";
let written = 0;
function report(files: Record<string, Status[]>, fileStatus: Partial<Record<string, string>> = {}): string {
  const path = join(dir, `report-${++written}.json`);
  const testResults = Object.entries(files).map(([name, tests]) => ({
    name,
    status: fileStatus[name] ?? (tests.includes("failed") ? "failed" : "passed"),
    message: "",
    assertionResults: tests.map((status, i) => ({ title: `test ${i}`, fullName: `${name} test ${i}`, status })),
  }));
  writeFileSync(path, JSON.stringify({ numTotalTests: 0, testResults }));
  return path;
}
function output(text: string): string {
  const path = join(dir, `output-${++written}.log`);
  writeFileSync(path, text);
  return path;
}
function summarize(...args: string[]): { lines: string[]; status: number | null } {
  const run = spawnSync(process.execPath, [".ci/summarize.mjs", ...args], { cwd: REPO_ROOT, encoding: "utf8" });
  return { lines: run.stdout.trim().split("\n"), status: run.status };
}

// What vitest prints for one test process that died (colours included, as CI has them).
const ONE_DEATH = "\x1b[31mCaused by: Error\x1b[22m: Worker exited unexpectedly\x1b[39m\n \x1b[2m     Errors \x1b[22m \x1b[1m\x1b[31m1 error\x1b[39m\x1b[22m\n";

describe(".ci/summarize.mjs", () => {
  it("counts passed and failed tests, skipped ones as neither, and names the failures", () => {
    const { lines, status } = summarize(report({ "/r/a.test.ts": ["passed", "passed", "skipped"], "/r/b.test.ts": ["passed", "failed"] }), "1");
    expect(lines.at(-1)).toBe("3 passed, 1 failed");
    expect(lines).toContain("  failed: /r/b.test.ts test 1");
    expect(status).toBe(1);
    expect(summarize(report({ "/r/a.test.ts": ["passed", "skipped"] }), "0")).toEqual({ lines: ["1 passed, 0 failed"], status: 0 });
  });

  it("counts a test its dead process left pending as failed, and a failed run with no failed test as 1 failed", () => {
    const died = report({ "/r/a.test.ts": ["passed", "pending"], "/r/b.test.ts": ["passed"] });
    const { lines, status } = summarize(died, "1");
    expect(lines).toContain("  never finished (its test fork died?): /r/a.test.ts test 1");
    expect(lines.at(-1)).toBe("2 passed, 1 failed");
    expect(status).toBe(1);
    // Exit 1 with every test passed (an unhandled error elsewhere) is not a pass either.
    expect(summarize(report({ "/r/a.test.ts": ["passed"] }), "1").lines.at(-1)).toBe("1 passed, 1 failed");
  });

  it("offers a dead file for a rerun only when its death is all that went wrong", () => {
    const died = report({ "/r/a.test.ts": ["passed", "pending"], "/r/b.test.ts": ["passed"] });
    expect(summarize("--died", died, output(ONE_DEATH)).lines).toEqual(["/r/a.test.ts"]);
    // A failed test beside it, or an unhandled error that is not a death: no rerun.
    const alsoFailed = report({ "/r/a.test.ts": ["passed", "pending"], "/r/b.test.ts": ["failed"] });
    expect(summarize("--died", alsoFailed, output(ONE_DEATH)).lines).toEqual([""]);
    const twoErrors = ONE_DEATH.replace("1 error", "2 errors");
    expect(summarize("--died", died, output(twoErrors)).lines).toEqual([""]);
    expect(summarize("--died", report({ "/r/b.test.ts": ["passed"] }), output("")).lines).toEqual([""]);
  });

  it("counts a rerun file's tests from its rerun, and fails if the rerun does", () => {
    const died = report({ "/r/a.test.ts": ["passed", "pending"], "/r/b.test.ts": ["passed", "passed"] });
    const passedAlone = summarize(died, "1", report({ "/r/a.test.ts": ["passed", "passed"] }), "0");
    expect(passedAlone.lines[0]).toMatch(/^the test fork running \/r\/a\.test\.ts died; it had not reported: \/r\/a\.test\.ts test 1\./);
    expect(passedAlone.lines.at(-1)).toBe("4 passed, 0 failed");
    expect(passedAlone.status).toBe(0);
    const failedAlone = summarize(died, "1", report({ "/r/a.test.ts": ["passed", "failed"] }), "1");
    expect(failedAlone.lines.at(-1)).toBe("3 passed, 1 failed");
    expect(failedAlone.status).toBe(1);
    const diedAgain = summarize(died, "1", report({ "/r/a.test.ts": ["pending", "pending"] }), "1");
    expect(diedAgain.lines.at(-1)).toBe("2 passed, 2 failed");
  });
});
