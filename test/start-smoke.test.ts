import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import { createInterface } from "node:readline";
import { afterAll, describe, expect, it } from "vitest";
import { freePort } from "@strata/events";
import { CLI, REPO_ROOT, WORKER_MAIN, cliEnv, killGroup, listProcesses, type ProcessInfo } from "./support/processes.ts";
import { loadGreedyOracle } from "./support/cluster.ts";

// The README's first command: `pnpm start` brings up NATS, workers and the HTTP API; a completion
// request gets the greedy story; Ctrl-C takes everything down with it.

const oracle = loadGreedyOracle();
const started: ChildProcessWithoutNullStreams[] = [];

afterAll(() => {
  // Only if a test failed half-way: each start runs in its own process group.
  for (const child of started) if (child.pid && child.exitCode === null) killGroup(child.pid);
});

function waitForLine(child: ChildProcessWithoutNullStreams, pattern: RegExp, stderr: () => string): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`no line matching ${pattern} within 60 s\nstderr:\n${stderr()}`)), 60_000);
    lines.on("line", (line) => {
      const match = pattern.exec(line);
      if (!match) return;
      clearTimeout(timer);
      resolve(match);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`start exited with ${code} before listening\nstderr:\n${stderr()}`));
    });
  });
}

function exitOf(child: ChildProcessWithoutNullStreams): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
}

async function untilGone(pids: number[], timeoutMs: number): Promise<ProcessInfo[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const alive = listProcesses().filter((p) => pids.includes(p.pid));
    if (alive.length === 0 || Date.now() > deadline) return alive;
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe("strata start", () => {
  it("serves the greedy story over HTTP and leaves no process behind on SIGINT", async () => {
    const port = await freePort();
    // Nothing listens there, so start launches its own nats-server (and must stop it too).
    const deadNats = `nats://127.0.0.1:${await freePort()}`;
    const child = spawn(process.execPath, ["--import", "tsx", CLI, "start", "--port", String(port), "--workers", "2"], {
      cwd: REPO_ROOT,
      env: cliEnv({ NATS_URL: deadNats }),
      detached: true,
    });
    started.push(child);
    let stderr = "";
    child.stderr.on("data", (c: Buffer) => (stderr += c.toString()));
    const exited = exitOf(child);

    const [, base] = await waitForLine(child, /^Listening on (http:\/\/\S+)$/, () => stderr);
    expect(base).toBe(`http://127.0.0.1:${port}`);
    expect(stderr).toContain(`NATS at ${deadNats} is not reachable`);

    const children = listProcesses().filter((p) => p.ppid === child.pid);
    const workers = children.filter((p) => p.args.includes(WORKER_MAIN));
    const natsServers = children.filter((p) => /nats-server/.test(p.args));
    expect(workers).toHaveLength(2);
    expect(natsServers).toHaveLength(1);

    const response = await fetch(`${base}/v1/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ prompt: oracle.prompt, max_tokens: 60, temperature: 0 }),
    });
    expect(response.status).toBe(200);
    const body = (await response.json()) as { choices: Array<{ text: string; finish_reason: string }>; usage: { prompt_tokens: number; completion_tokens: number } };
    expect(body.choices[0].text).toBe(oracle.text.slice(oracle.prompt.length));
    expect(body.choices[0].finish_reason).toBe("length");
    expect(body.usage).toMatchObject({ prompt_tokens: oracle.prompt_token_ids.length, completion_tokens: 60 });

    child.kill("SIGINT");
    const { code, signal } = await exited;
    expect({ code, signal }).toEqual({ code: 0, signal: null });
    expect(await untilGone(children.map((p) => p.pid), 10_000)).toEqual([]);
    await expect(fetch(`${base}/health`)).rejects.toThrow();
  });

  it("as `pnpm start`, Ctrl-C (SIGINT to the whole process group, as a terminal sends it) ends with status 0 and no pnpm error", async () => {
    const port = await freePort();
    const child = spawn("pnpm", ["start", "--port", String(port), "--workers", "1"], { cwd: REPO_ROOT, env: cliEnv(), detached: true });
    started.push(child);
    let output = "";
    child.stderr.on("data", (c: Buffer) => (output += c.toString()));
    child.stdout.on("data", (c: Buffer) => (output += c.toString()));
    const exited = exitOf(child);
    await waitForLine(child, /^Listening on http:\/\/\S+$/, () => output);
    const group = listProcesses().filter((p) => p.pid !== child.pid && p.pgid === child.pid);
    expect(group.some((p) => p.args.includes(WORKER_MAIN))).toBe(true);

    process.kill(-child.pid!, "SIGINT");
    const { code, signal } = await exited;
    expect({ code, signal }).toEqual({ code: 0, signal: null });
    expect(output).toContain("stopping...");
    expect(output).not.toMatch(/ELIFECYCLE|Command failed/);
    expect(await untilGone(group.map((p) => p.pid), 10_000)).toEqual([]);
  });
});
