import { spawn, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const CLI = "services/coordinator/src/cli.ts";
export const WORKER_MAIN = "services/worker/src/main.ts";

export interface Exited {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a command in the repository root to completion. It gets its own process group, so a run
 * that overstays `timeoutMs` is killed with everything it started.
 */
export function runToExit(command: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Exited> {
  const child = spawn(command, args, { cwd: REPO_ROOT, env: opts.env ?? cliEnv(), stdio: ["ignore", "pipe", "pipe"], detached: true });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      killGroup(child.pid!);
      reject(new Error(`${command} ${args.join(" ")} did not exit within ${opts.timeoutMs} ms\nstderr:\n${stderr}`));
    }, opts.timeoutMs ?? 90_000);
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** The test's environment without a NATS_URL of its own, so each test says which NATS it means. */
export function cliEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  if (!("NATS_URL" in extra)) delete env.NATS_URL;
  return env;
}

export function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // already gone
  }
}

export interface ProcessInfo {
  pid: number;
  ppid: number;
  /** Process group id. */
  pgid: number;
  state: string;
  args: string;
}

/** Every live process (zombies excluded: they hold no resources and are reaped by their parent). */
export function listProcesses(): ProcessInfo[] {
  const ps = spawnSync("ps", ["-eo", "pid=,ppid=,pgid=,stat=,args="], { encoding: "utf8" });
  return ps.stdout
    .split("\n")
    .map((line) => /^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\S+)\s+(.*)$/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), pgid: Number(m[3]), state: m[4], args: m[5] }))
    .filter((p) => !p.state.startsWith("Z"));
}

/** Worker processes launched with this NATS URL (unique per test file, so they are ours). */
export function workersUsing(natsUrl: string): ProcessInfo[] {
  return listProcesses().filter((p) => p.args.includes(WORKER_MAIN) && p.args.includes(natsUrl));
}
