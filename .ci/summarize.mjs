// Reads vitest's JSON report for CI.
//
//   node .ci/summarize.mjs RESULTS STATUS [RERUN_RESULTS RERUN_STATUS]
//     prints every test that neither passed nor was skipped, by file, then the line CI reads,
//     `N passed, N failed`, and exits 0 only if nothing failed;
//   node .ci/summarize.mjs --died RESULTS OUTPUT
//     prints the test files whose fork died mid-test, one a line, when that is all that went
//     wrong (no test failed, and every unhandled error in OUTPUT is a fork that exited).
//
// A test still running when its test fork died, or one whose result the fork had not sent yet
// (vitest sends them in batches), is left "pending" in the report, and its file "passed": it
// counts as failed. Stop 22's CI run exited 1 that way and still ended "418 passed,
// 0 failed", naming no test. A file whose fork died may be run once more on its own (.ci/run does
// so); its tests are then counted from that run, and the death is printed.
import { readFileSync } from "node:fs";

const SKIPPED = new Set(["skipped", "todo", "disabled"]);
const stripAnsi = (text) => text.replace(/\x1b\[[0-9;]*m/g, "");

function files(resultsPath) {
  return JSON.parse(readFileSync(resultsPath, "utf8")).testResults.map((file) => ({
    name: file.name,
    status: file.status,
    message: file.message,
    tests: file.assertionResults.map((t) => ({ name: t.fullName ?? t.title, status: t.status })),
  }));
}

const unfinished = (file) => file.tests.filter((t) => t.status === "pending");
const notPassed = (file) => file.tests.filter((t) => t.status !== "passed" && !SKIPPED.has(t.status));

if (process.argv[2] === "--died") {
  const [resultsPath, outputPath] = process.argv.slice(3);
  const all = files(resultsPath);
  const died = all.filter((f) => unfinished(f).length > 0);
  const output = stripAnsi(readFileSync(outputPath, "utf8"));
  const errors = Number(/^\s*Errors\s+(\d+) errors?/m.exec(output)?.[1] ?? 0);
  const exits = output.match(/Worker exited unexpectedly/g)?.length ?? 0;
  const failedOtherwise = all.some((f) => notPassed(f).some((t) => t.status !== "pending") || (f.status !== "passed" && unfinished(f).length === 0));
  if (died.length > 0 && !failedOtherwise && errors === exits && exits === died.length) for (const f of died) console.log(f.name);
  process.exit(0);
}

const [resultsPath, status, rerunPath, rerunStatus] = process.argv.slice(2);
let counted = files(resultsPath);
let vitestFailed = Number(status) !== 0;
if (rerunPath) {
  const rerun = files(rerunPath);
  for (const file of counted.filter((f) => unfinished(f).length > 0)) {
    console.log(`the test fork running ${file.name} died; it had not reported: ${unfinished(file).map((t) => t.name).join("; ")}. Its tests are counted from its run on its own`);
  }
  counted = [...counted.filter((f) => !rerun.some((r) => r.name === f.name)), ...rerun];
  // The first run's only errors were the deaths (see --died): the rerun says how it went.
  vitestFailed = Number(rerunStatus) !== 0;
}

let passed = 0;
let failed = 0;
for (const file of counted) {
  const bad = notPassed(file);
  passed += file.tests.filter((t) => t.status === "passed").length;
  failed += bad.length;
  if (file.status !== "passed" || bad.length > 0) {
    const why = file.status !== "passed" ? ` (${file.status}${file.message ? `: ${file.message.split("\n")[0]}` : ""})` : "";
    console.log(`not passed: ${file.name}${why}`);
    for (const t of bad) console.log(`  ${t.status === "pending" ? "never finished (its test fork died?)" : t.status}: ${t.name}`);
  }
}
if (vitestFailed && failed === 0) {
  console.log("vitest exited non-zero though no test failed (an unhandled error, or a test fork that died): counted as 1 failed");
  failed = 1;
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 ? 1 : 0);
