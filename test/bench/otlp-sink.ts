// An OTLP/HTTP endpoint in a process of its own, as a collector would be, that reads and
// acknowledges every export. Prints {"url": …} on its first line; answers "stats" messages with
// {"exports", "bytes"}; exits when its parent disconnects.
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";

let exports = 0;
let bytes = 0;
const server = createServer((req, res) => {
  req.on("data", (chunk: Buffer) => (bytes += chunk.length));
  req.on("end", () => {
    exports++;
    res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
  });
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces` }) + "\n");
});
process.on("message", (msg) => {
  if (msg === "stats") process.send!({ exports, bytes });
});
process.on("disconnect", () => process.exit(0));
