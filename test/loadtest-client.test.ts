import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { streamCompletion } from "../loadtest/client.ts";

// The load client speaks HTTP/1.1 on raw sockets (loadtest/client.ts): these servers are node:http,
// writing the response in awkward pieces.
let close: (() => Promise<void>) | undefined;
afterEach(async () => {
  await close?.();
  close = undefined;
});

async function server(handle: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<{ url: string; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const s = createServer((req, res) => {
    sockets.add(req.socket);
    let body = "";
    req.on("data", (c: Buffer) => (body += c.toString()));
    req.on("end", () => handle(req, res, body));
  });
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  close = () =>
    new Promise<void>((r) => {
      s.closeAllConnections();
      s.close(() => r());
    });
  return { url: `http://127.0.0.1:${(s.address() as AddressInfo).port}`, sockets };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sse = (obj: unknown) => `data: ${JSON.stringify(obj)}\n\n`;

describe("loadtest client (raw HTTP/1.1)", () => {
  it("reads a chunked SSE stream split anywhere (inside CRLFs and multi-byte characters), and reuses the connection", async () => {
    const { url, sockets } = await server(async (req, res, body) => {
      expect(req.url).toBe("/v1/completions");
      expect(JSON.parse(body)).toMatchObject({ prompt: "x", stream: true, stream_options: { include_usage: true } });
      res.writeHead(200, { "content-type": "text/event-stream" });
      const events = [sse({ choices: [{ text: "" }] }), sse({ choices: [{ text: "Once ü" }] }), sse({ choices: [{ text: " upon 🙂" }] }), sse({ choices: [], usage: { completion_tokens: 2 } }), "data: [DONE]\n\n"];
      // Each piece is its own HTTP chunk; some TCP writes split chunk headers and characters.
      const bytes = Buffer.from(events.join(""));
      for (let at = 0; at < bytes.length; at += 7) {
        res.write(bytes.subarray(at, at + 7));
        if (at % 35 === 0) await sleep(1);
      }
      res.end();
    });
    const first = await streamCompletion(url, { prompt: "x" });
    expect(first).toMatchObject({ ok: true, status: 200, completionTokens: 2 });
    expect(first.ttftMs).toBeGreaterThan(0);
    const second = await streamCompletion(url, { prompt: "x" });
    expect(second).toMatchObject({ ok: true, completionTokens: 2 });
    expect(sockets.size).toBe(1);
  });

  it("reports an error status with its body, an error event mid-stream, and goes on with the next request", async () => {
    let n = 0;
    const { url } = await server((_req, res) => {
      n++;
      if (n === 1) return res.writeHead(400, { "content-type": "application/json" }).end(JSON.stringify({ error: { message: "max_tokens too large" } }));
      res.writeHead(200, { "content-type": "text/event-stream" });
      if (n === 2) return res.end(sse({ error: { message: "stage 1 failed" } }) + "data: [DONE]\n\n");
      res.end(sse({ choices: [{ text: "ok" }] }) + sse({ choices: [], usage: { completion_tokens: 1 } }) + "data: [DONE]\n\n");
    });
    expect(await streamCompletion(url, { prompt: "x" })).toMatchObject({ ok: false, status: 400, error: expect.stringContaining("max_tokens too large") });
    expect(await streamCompletion(url, { prompt: "x" })).toMatchObject({ ok: false, status: 200, error: "stage 1 failed" });
    expect(await streamCompletion(url, { prompt: "x" })).toMatchObject({ ok: true, completionTokens: 1 });
  });

  it("retries once on a fresh connection when the server closed the kept-alive one, and stops on abort", async () => {
    const { url, sockets } = await server((_req, res, body) => {
      if ((JSON.parse(body) as { prompt: string }).prompt === "hang") return; // never answers
      res.writeHead(200, { "content-type": "text/event-stream" });
      res.end(sse({ choices: [{ text: "a" }] }) + sse({ choices: [], usage: { completion_tokens: 1 } }) + "data: [DONE]\n\n");
    });
    expect((await streamCompletion(url, { prompt: "x" })).ok).toBe(true);
    // The server drops its idle connection (as a keep-alive timeout does).
    for (const s of sockets) s.destroy();
    await sleep(20);
    expect(await streamCompletion(url, { prompt: "x" })).toMatchObject({ ok: true, completionTokens: 1 });
    const abort = new AbortController();
    const pending = streamCompletion(url, { prompt: "hang" }, abort.signal);
    setTimeout(() => abort.abort(), 50);
    expect(await pending).toMatchObject({ ok: false, error: "aborted" });
    expect(await streamCompletion(url, { prompt: "x" })).toMatchObject({ ok: true, completionTokens: 1 });
  });
});
