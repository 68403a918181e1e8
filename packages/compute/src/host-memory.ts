import { readFileSync } from "node:fs";
import { freemem } from "node:os";

/**
 * Bytes this process could still take on its host: Linux's MemAvailable (free memory plus the
 * page cache and reclaimable slabs it could drop), within the headroom left under this process's
 * cgroup (v2) memory limit when it has one, as in a container. Elsewhere, os.freemem().
 */
export function availableMemoryBytes(): number {
  const host = memAvailableBytes(readOptional("/proc/meminfo")) ?? freemem();
  const headroom = cgroupHeadroomBytes(readOptional("/sys/fs/cgroup/memory.max"), readOptional("/sys/fs/cgroup/memory.current"));
  return headroom === undefined ? host : Math.min(host, headroom);
}

/** MemAvailable of a /proc/meminfo text, in bytes; undefined when absent. */
export function memAvailableBytes(meminfo: string | undefined): number | undefined {
  const match = meminfo && /^MemAvailable:\s+(\d+)\s+kB$/m.exec(meminfo);
  return match ? Number(match[1]) * 1024 : undefined;
}

/** A cgroup v2 limit less its usage, in bytes; undefined without a limit ("max") or either file. */
export function cgroupHeadroomBytes(max: string | undefined, current: string | undefined): number | undefined {
  if (max === undefined || current === undefined || max.trim() === "max") return undefined;
  const limit = Number(max.trim());
  const used = Number(current.trim());
  if (!Number.isFinite(limit) || !Number.isFinite(used)) return undefined;
  return Math.max(0, limit - used);
}

function readOptional(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}
