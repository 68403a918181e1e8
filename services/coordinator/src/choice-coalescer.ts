import type { ChoiceEvent } from "./completions.ts";

/**
 * Merges a choice's text events into one chunk per flush, so a stream sends one chunk per burst
 * instead of one per token. Text and logprobs concatenate; a finish event sends its choice's
 * pending text first, at once. Flushes come at most every `intervalMs` (the first at the next
 * pass of the event loop, so the first token is never held): a decode run's steps reach the
 * coordinator a few at a time (a run's held steps together, its last two one by one), and each
 * flush is a JSON chunk and a socket write on the server and a read and a parse on the client
 * (what vLLM's --stream-interval trades explicitly). 0 flushes every pass. `intervalMs` may be a
 * function, asked at each flush (see autoStreamIntervalMs).
 */
export class ChoiceCoalescer {
  private readonly pending = new Map<number, Extract<ChoiceEvent, { kind: "text" }>>();
  private flushScheduled = false;
  private lastFlushMs = -Infinity;

  constructor(
    private readonly send: (event: ChoiceEvent) => void,
    private readonly intervalMs: number | (() => number) = 0,
  ) {}

  push(event: ChoiceEvent): void {
    if (event.kind === "finish") {
      this.flushChoice(event.index);
      this.send(event);
      return;
    }
    const held = this.pending.get(event.index);
    if (held) {
      held.text += event.text;
      held.logprobs.push(...event.logprobs);
    } else {
      // A copy: the caller's event (and its logprobs array) is not ours to grow.
      this.pending.set(event.index, { kind: "text", index: event.index, text: event.text, logprobs: [...event.logprobs] });
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      const interval = typeof this.intervalMs === "number" ? this.intervalMs : this.intervalMs();
      this.flushAfter(this.lastFlushMs + interval);
    }
  }

  /**
   * Flushes once `dueMs` (performance.now() time) has come. Timers count from the event loop's
   * cached clock, in whole milliseconds, so one can fire a little early: it is then set again.
   */
  private flushAfter(dueMs: number): void {
    const wait = dueMs - performance.now();
    if (wait > 0) setTimeout(() => this.flushAfter(dueMs), Math.ceil(wait));
    else setImmediate(() => this.flush());
  }

  /** Sends everything held now, in choice order. */
  flush(): void {
    this.flushScheduled = false;
    if (this.pending.size === 0) return;
    this.lastFlushMs = performance.now();
    for (const index of [...this.pending.keys()].sort((a, b) => a - b)) this.flushChoice(index);
  }

  private flushChoice(index: number): void {
    const held = this.pending.get(index);
    if (!held) return;
    this.pending.delete(index);
    this.send(held);
  }
}

/** Under "auto", each open stream adds this much to every stream's interval … */
export const AUTO_STREAM_MS_PER_STREAM = 1.5;
/** … up to this long. */
export const AUTO_STREAM_MAX_INTERVAL_MS = 25;

/**
 * The interval "auto" gives each stream with `openStreams` streams open: openStreams x 1.5 ms, at
 * most 25 ms. The API then writes at most ~670 chunks a second in all, however many streams are
 * open, while one stream alone still gets its tokens nearly as they come. Each chunk costs the
 * coordinator a JSON chunk and a socket write (and the client a read and a parse): at 16 streams
 * on 2 workers, 10 ms against 25 ms measured ~56 against ~48 us of coordinator CPU per token and
 * ~8% fewer tokens/s; 50 ms gained nothing over 25.
 */
export function autoStreamIntervalMs(openStreams: number): number {
  return Math.min(AUTO_STREAM_MAX_INTERVAL_MS, Math.max(0, openStreams) * AUTO_STREAM_MS_PER_STREAM);
}
