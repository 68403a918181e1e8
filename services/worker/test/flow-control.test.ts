import { connect } from "node:http2";
import { describe, expect, it } from "vitest";
import { STREAM_WINDOW_BYTES } from "@strata/proto";
import { startWorkerServer } from "../src/server.ts";

// A stage must take a large hidden state (a long prefill chunk) in one go, not 64 KiB at a time
// with WINDOW_UPDATEs that wait on its busy event loop: its server advertises wide windows.
describe("a worker's gRPC server", () => {
  it("advertises HTTP/2 receive windows of STREAM_WINDOW_BYTES to the stages that connect to it", async () => {
    const worker = await startWorkerServer({ workerId: "flow-control" });
    const session = connect(`http://${worker.address}`);
    try {
      const settings = await new Promise<{ initialWindowSize?: number }>((resolve, reject) => {
        session.once("error", reject);
        // The server's first SETTINGS, then the one that widens the per-stream window.
        session.on("remoteSettings", (s) => (s.initialWindowSize === STREAM_WINDOW_BYTES ? resolve(s) : undefined));
        setTimeout(() => resolve(session.remoteSettings), 2000).unref();
      });
      expect(settings.initialWindowSize).toBe(STREAM_WINDOW_BYTES);
      expect(STREAM_WINDOW_BYTES).toBeGreaterThanOrEqual(4 * 1024 * 1024);
    } finally {
      session.close();
      await worker.close();
    }
  });
});
