/** Load progress for N workers: one redrawn bar each on a terminal, plain lines otherwise. */
export class LoadProgressView {
  private readonly loaded: number[];
  private readonly total: number[];
  private drawn = false;
  private lastPlainPercent: number[];

  constructor(
    private readonly labels: string[],
    private readonly out: NodeJS.WriteStream = process.stderr,
  ) {
    this.loaded = labels.map(() => 0);
    this.total = labels.map(() => 0);
    this.lastPlainPercent = labels.map(() => -1);
  }

  update(stage: number, bytesLoaded: number, bytesTotal: number): void {
    this.loaded[stage] = bytesLoaded;
    this.total[stage] = bytesTotal;
    if (this.out.isTTY) return this.redraw();
    const percent = bytesTotal > 0 ? Math.floor((100 * bytesLoaded) / bytesTotal) : 100;
    // Plain output: a line per worker per 25%, so logs stay short.
    if (percent === 100 || percent - this.lastPlainPercent[stage] >= 25) {
      this.lastPlainPercent[stage] = percent;
      this.out.write(`${this.labels[stage]}: loaded ${formatBytes(bytesLoaded)} of ${formatBytes(bytesTotal)} (${percent}%)\n`);
    }
  }

  private redraw(): void {
    if (this.drawn) this.out.write(`\x1b[${this.labels.length}A`);
    this.drawn = true;
    const width = 30;
    this.labels.forEach((label, i) => {
      const fraction = this.total[i] > 0 ? this.loaded[i] / this.total[i] : 0;
      const filled = Math.round(fraction * width);
      this.out.write(
        `\x1b[2K${label.padEnd(28)} [${"#".repeat(filled)}${"-".repeat(width - filled)}] ${String(Math.floor(fraction * 100)).padStart(3)}% ${formatBytes(this.loaded[i])}\n`,
      );
    });
  }
}

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  if (bytes < 1024 ** 3) return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
  return `${(bytes / 1024 ** 3).toFixed(2)} GiB`;
}
