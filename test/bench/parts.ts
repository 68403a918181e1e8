// Every part `pnpm bench` knows, in the order it runs them. To add one: write test/bench/<name>.ts
// exporting a BenchPart (see support.ts) and add one line here.
import type { BenchPart } from "./support.ts";
import { singleStream } from "./single-stream.ts";
import { batching } from "./batching.ts";

export const PARTS: BenchPart[] = [
  singleStream,
  batching,
];
