/**
 * Stop strings over streamed text: text goes out as soon as it cannot be the start of a stop
 * string; when one appears, the output ends just before it. The matched string is never emitted.
 */
export class StopStringFilter {
  private pending = "";
  private emitted = "";
  stopped = false;

  constructor(private readonly stops: readonly string[]) {}

  /** Adds newly decoded text; returns what can be sent now. */
  push(piece: string): string {
    if (this.stopped || piece.length === 0) return "";
    if (this.stops.length === 0) return this.emit(piece);
    this.pending += piece;
    // Emitted text never ends in a prefix of a stop string, so any match starts inside `pending`.
    let cut = -1;
    for (const stop of this.stops) {
      const at = this.pending.indexOf(stop);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.stopped = true;
      const out = this.pending.slice(0, cut);
      this.pending = "";
      return this.emit(out);
    }
    const hold = this.heldBackLength();
    const out = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return this.emit(out);
  }

  /** The end of generation: whatever was held back goes out. */
  flush(): string {
    if (this.stopped) return "";
    const out = this.pending;
    this.pending = "";
    return this.emit(out);
  }

  get text(): string {
    return this.emitted;
  }

  // The longest tail of `pending` that some stop string starts with.
  private heldBackLength(): number {
    for (let k = Math.min(this.pending.length, Math.max(...this.stops.map((s) => s.length)) - 1); k > 0; k--) {
      const tail = this.pending.slice(this.pending.length - k);
      if (this.stops.some((s) => s.startsWith(tail))) return k;
    }
    return 0;
  }

  private emit(text: string): string {
    this.emitted += text;
    return text;
  }
}
