import { open, type FileHandle } from "node:fs/promises";
import { ModelFormatError } from "./errors.ts";

// fs reads are capped near 2 GiB per call; smaller chunks also give progress callbacks a pulse.
const CHUNK_BYTES = 64 * 1024 * 1024;

/**
 * Positioned reads from weight files, with one open handle per file and a count of every byte read,
 * so a stage can prove it never touched other layers' bytes.
 */
export class ByteReader {
  private handles = new Map<string, Promise<FileHandle>>();
  private total = 0;

  get bytesRead(): number {
    return this.total;
  }

  private handle(path: string): Promise<FileHandle> {
    let h = this.handles.get(path);
    if (!h) {
      h = open(path, "r");
      this.handles.set(path, h);
    }
    return h;
  }

  async size(path: string): Promise<number> {
    return (await (await this.handle(path)).stat()).size;
  }

  /** Fills `target` from `position`; a short read means the file is shorter than promised. */
  async read(path: string, position: number, target: Uint8Array, onBytes?: (n: number) => void): Promise<void> {
    const fh = await this.handle(path);
    let done = 0;
    while (done < target.byteLength) {
      const want = Math.min(CHUNK_BYTES, target.byteLength - done);
      const { bytesRead } = await fh.read(target, done, want, position + done);
      if (bytesRead === 0) {
        throw new ModelFormatError(`${path}: truncated, unexpected end of file at byte ${position + done} (wanted ${target.byteLength - done} more)`);
      }
      done += bytesRead;
      this.total += bytesRead;
      onBytes?.(bytesRead);
    }
  }

  async close(): Promise<void> {
    const handles = [...this.handles.values()];
    this.handles.clear();
    // A handle whose open failed has nothing to close.
    const opened = await Promise.allSettled(handles);
    await Promise.all(opened.map((r) => (r.status === "fulfilled" ? r.value.close() : undefined)));
  }
}
