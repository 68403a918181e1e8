// Every part `pnpm bench` knows, in the order it runs them. To add one: write test/bench/<name>.ts
// exporting a BenchPart (see support.ts) and add one line here.
import type { BenchPart } from "./support.ts";
import { singleStream } from "./single-stream.ts";
import { batching } from "./batching.ts";
import { kvWaste } from "./kv-waste.ts";
import { kvDtype } from "./kv-dtype.ts";
import { httpVsInprocess, tracingOnVsOff } from "./api.ts";

export const PARTS: BenchPart[] = [
  singleStream,
  batching,
  kvWaste,
  kvDtype,
  httpVsInprocess,
  tracingOnVsOff,
];
