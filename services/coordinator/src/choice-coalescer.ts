import type { ChoiceEvent } from "./completions.ts";

/**
 * Merges a choice's text events that arrive in the same pass of the event loop into one, so a
 * stream sends one chunk per burst instead of one per token. A decode run's steps reach the
 * coordinator several at a time; their tokens were leaving in one socket write already, so
 * merging them moves no token later, and saves the server and the client a JSON chunk each
 * (what vLLM's --stream-interval trades explicitly). Text and logprobs concatenate; a finish
 * event sends its choice's pending text first.
 */
export class ChoiceCoalescer {
  private readonly pending = new Map<number, Extract<ChoiceEvent, { kind: "text" }>>();
  private flushScheduled = false;

  constructor(private readonly send: (event: ChoiceEvent) => void) {}

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
      setImmediate(() => this.flush());
    }
  }

  /** Sends everything held now, in choice order. */
  flush(): void {
    this.flushScheduled = false;
    for (const index of [...this.pending.keys()].sort((a, b) => a - b)) this.flushChoice(index);
  }

  private flushChoice(index: number): void {
    const held = this.pending.get(index);
    if (!held) return;
    this.pending.delete(index);
    this.send(held);
  }
}
