/**
 * How many steps a decode run may take, from how long a step has lately taken. Every run costs a
 * round trip to the coordinator at its end, so fast steps want long runs; but a request that
 * arrives during a run waits for it to end, and a sequence that stops inside one computes its
 * remaining steps for nothing, so a run should last about `targetMs`. Never fewer than `minSteps`
 * (slow steps: the round trip is small beside them, runs still save it), never more than
 * `maxSteps`; with no measurement yet, `minSteps`.
 */
export function decodeRunCap(stepMs: number | undefined, opts: { minSteps: number; maxSteps: number; targetMs: number }): number {
  const min = Math.min(opts.minSteps, opts.maxSteps);
  if (stepMs === undefined || !(stepMs > 0)) return min;
  return Math.max(min, Math.min(opts.maxSteps, Math.floor(opts.targetMs / stepMs)));
}

/** An exponentially weighted mean: recent samples count most, one outlier moves it a fifth. */
export class MovingMean {
  private current: number | undefined;

  constructor(private readonly weight = 0.2) {}

  add(sample: number): void {
    this.current = this.current === undefined ? sample : this.current + this.weight * (sample - this.current);
  }

  get value(): number | undefined {
    return this.current;
  }
}
