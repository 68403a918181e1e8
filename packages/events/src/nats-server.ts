import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export class NatsServerUnavailable extends Error {
  override name = "NatsServerUnavailable";
}

export interface NatsServerProcess {
  url: string;
  port: number;
  /** Stops the server; its store stays for restart() unless removeStore. */
  stop(opts?: { removeStore?: boolean }): Promise<void>;
  /** Starts it again on the same port and store (for tests that kill NATS). */
  restart(): Promise<void>;
}

export function findNatsServerBinary(): string | undefined {
  for (const candidate of [process.env.NATS_SERVER_BIN, "/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]) {
    if (candidate && spawnSync(candidate, ["--version"]).status === 0) return candidate;
  }
  const which = spawnSync("sh", ["-c", "command -v nats-server"], { encoding: "utf8" });
  const found = which.stdout.trim();
  return found.length > 0 ? found : undefined;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Spawns `nats-server -js` on a free loopback port with its own store directory. */
export async function startNatsServer(opts: { port?: number } = {}): Promise<NatsServerProcess> {
  const binary = findNatsServerBinary();
  if (!binary) {
    throw new NatsServerUnavailable(
      "nats-server was not found on PATH. Install it (Debian/Ubuntu: `apt-get install -y nats-server`, " +
        "or https://docs.nats.io/running-a-nats-service/introduction/installation) or point NATS_URL at a running server.",
    );
  }
  const port = opts.port ?? (await freePort());
  const storeDir = mkdtempSync(join(tmpdir(), "strata-nats-"));
  let child: ChildProcess | undefined;

  const launch = async (): Promise<void> => {
    child = spawn(binary, ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir], { stdio: "ignore" });
    await waitForPort(port, 10_000);
  };
  await launch();

  const stop = async (): Promise<void> => {
    const running = child;
    child = undefined;
    if (!running || running.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      running.once("exit", () => resolve());
      running.kill("SIGKILL");
    });
  };

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    async stop(stopOpts = {}) {
      await stop();
      if (stopOpts.removeStore ?? true) rmSync(storeDir, { recursive: true, force: true });
    },
    async restart() {
      await stop();
      await launch();
    },
  };
}

export async function isReachable(url: string, timeoutMs = 500): Promise<boolean> {
  const parsed = new URL(url.replace(/^nats:/, "http:"));
  return new Promise((resolve) => {
    const socket = createConnection({ host: parsed.hostname, port: Number(parsed.port || 4222) });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await isReachable(`nats://127.0.0.1:${port}`, 200)) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new NatsServerUnavailable(`nats-server did not start listening on 127.0.0.1:${port} within ${timeoutMs} ms`);
}
