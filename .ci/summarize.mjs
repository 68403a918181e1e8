// Prints the line CI reads, `N passed, N failed`, from vitest's JSON report, and before it every
// test that neither passed nor was skipped, by file. A test still running when its test fork died
// is left "pending" in the report (and its file "passed"): it counts as failed, and so does a run
// vitest itself failed (an unhandled error) with no failed test. Before, "418 passed, 0 failed"
// closed a run that exited 1 because a fork had died, and named no test.
import { readFileSync } from "node:fs";

const [resultsPath, vitestStatus] = process.argv.slice(2);
const report = JSON.parse(readFileSync(resultsPath, "utf8"));
const skipped = new Set(["skipped", "todo", "disabled"]);
let passed = 0;
let failed = 0;
for (const file of report.testResults) {
  const unfinished = file.assertionResults.filter((t) => t.status !== "passed" && !skipped.has(t.status));
  passed += file.assertionResults.length - unfinished.length - file.assertionResults.filter((t) => skipped.has(t.status)).length;
  failed += unfinished.length;
  if (file.status !== "passed" || unfinished.length > 0) {
    const why = file.status !== "passed" ? ` (${file.status}${file.message ? `: ${file.message.split("\n")[0]}` : ""})` : "";
    console.log(`not passed: ${file.name}${why}`);
    for (const t of unfinished) console.log(`  ${t.status === "pending" ? "never finished (its test fork died?)" : t.status}: ${t.fullName ?? t.title}`);
  }
}
if (Number(vitestStatus) !== 0 && failed === 0) {
  console.log(`vitest exited with status ${vitestStatus} though no test failed (an unhandled error or a test fork that died): counted as 1 failed`);
  failed = 1;
}
console.log(`${passed} passed, ${failed} failed`);
