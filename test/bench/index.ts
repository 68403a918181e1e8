// `pnpm bench [--json] [<part>...]`: runs the registered parts (all by default) against one shared
// nats-server. Human-readable output on stdout; with --json the last stdout line is one flat JSON
// object of every figure. Worker logs and errors go to stderr so they never break that last line.
import { performance } from "node:perf_hooks";
import { startNatsServer, type NatsServerProcess } from "@strata/events";
import { PARTS } from "./parts.ts";
import type { BenchContext } from "./support.ts";

const USAGE = "usage: pnpm bench [--json] [<part>...]";

function selectParts(args: string[]) {
  const known = PARTS.map((p) => `  ${p.name.padEnd(16)} ${p.description}`).join("\n");
  const flags = args.filter((a) => a.startsWith("-"));
  if (flags.some((f) => f === "-h" || f === "--help")) {
    console.log(`${USAGE}\n\nparts:\n${known}`);
    process.exit(0);
  }
  const badFlag = flags.find((f) => f !== "--json");
  const names = args.filter((a) => !a.startsWith("-"));
  const unknown = names.filter((n) => !PARTS.some((p) => p.name === n));
  if (badFlag || unknown.length > 0) {
    const what = badFlag ? `unknown option ${badFlag}` : `unknown bench part${unknown.length > 1 ? "s" : ""}: ${unknown.join(", ")}`;
    console.error(`${what}\n${USAGE}\n\nknown parts:\n${known}`);
    process.exit(2);
  }
  return { json: flags.includes("--json"), parts: names.length ? PARTS.filter((p) => names.includes(p.name)) : PARTS };
}

const { json, parts } = selectParts(process.argv.slice(2));
const figures: Record<string, number> = {};
let failed = false;
let nats: NatsServerProcess | undefined;

// Workers exit when our stdin pipe closes, but nats-server does not: stop it on Ctrl-C / kill too.
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => void nats?.stop().finally(() => process.exit(signal === "SIGINT" ? 130 : 143)));
}

try {
  nats = await startNatsServer();
  const ctx: BenchContext = { natsUrl: nats.url, print: (line = "") => console.log(line) };
  for (const part of parts) {
    console.log(`\n== ${part.name}: ${part.description}`);
    const start = performance.now();
    try {
      const result = await part.run(ctx);
      for (const [key, value] of Object.entries(result)) {
        if (key in figures) throw new Error(`figure ${key} is already reported by another part`);
        // JSON.stringify would silently turn NaN/Infinity into null.
        if (!Number.isFinite(value)) throw new Error(`figure ${key} is not a finite number: ${value}`);
      }
      Object.assign(figures, result);
      console.log(`(${part.name} took ${((performance.now() - start) / 1000).toFixed(1)} s)`);
    } catch (error) {
      failed = true;
      console.error(`bench part ${part.name} failed:`, error);
    }
  }
} catch (error) {
  failed = true;
  console.error(error instanceof Error ? error.message : error);
} finally {
  await nats?.stop();
}

if (json) console.log(JSON.stringify(figures));
// Explicit exit: a stray handle (a gRPC channel, a timer) must not keep the bench alive after it is done.
process.exit(failed ? 1 : 0);
