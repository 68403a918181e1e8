import { createServer, type IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { gunzipSync } from "node:zlib";
import { fromBinary } from "@bufbuild/protobuf";
import { ExportTraceServiceRequestSchema, type AnyValue, type KeyValue } from "./otlp/gen/otlp_trace_pb.ts";

export type AttributeValue = string | number | boolean | Array<string | number | boolean>;

export interface ReceivedSpan {
  serviceName: string;
  traceId: string;
  spanId: string;
  /** "" for a root span. */
  parentSpanId: string;
  name: string;
  startUnixNanos: bigint;
  endUnixNanos: bigint;
  attributes: Record<string, AttributeValue>;
  links: Array<{ traceId: string; spanId: string; attributes: Record<string, AttributeValue> }>;
  events: string[];
}

export interface OtlpReceiver {
  /** The traces URL to export to (http://127.0.0.1:<port>/v1/traces). */
  tracesUrl: string;
  spans: ReceivedSpan[];
  requests: number;
  /** Status of each request from now on, by its 1-based number (default 200 for all). */
  statusFor: (request: number) => number;
  /** Answers nothing until resume() (requests still arrive and are decoded). */
  pause(): void;
  resume(): void;
  close(): Promise<void>;
}

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex");

function value(v: AnyValue | undefined): AttributeValue {
  switch (v?.value.case) {
    case "stringValue":
    case "boolValue":
    case "doubleValue":
      return v.value.value;
    case "intValue":
      return Number(v.value.value);
    case "arrayValue":
      return v.value.value.values.map((x) => value(x) as string | number | boolean);
    default:
      return "";
  }
}

const attributes = (kvs: KeyValue[]) => Object.fromEntries(kvs.map((kv) => [kv.key, value(kv.value)]));

async function body(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const raw = Buffer.concat(chunks);
  return req.headers["content-encoding"] === "gzip" ? gunzipSync(raw) : raw;
}

/** A real OTLP/HTTP protobuf trace endpoint on loopback that decodes and keeps every span it receives. */
export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const receiver = { spans, requests: 0, statusFor: () => 200 } as unknown as OtlpReceiver;
  let held: Array<() => void> | undefined;
  receiver.pause = () => void (held ??= []);
  receiver.resume = () => {
    const answers = held ?? [];
    held = undefined;
    for (const answer of answers) answer();
  };
  const server = createServer((req, res) => {
    if (req.method !== "POST" || req.url !== "/v1/traces") {
      res.writeHead(404).end();
      return;
    }
    body(req).then(
      (data) => {
        const status = receiver.statusFor(++receiver.requests);
        const answer = () => res.writeHead(status, { "content-type": "application/x-protobuf" }).end(status === 200 ? undefined : "refused");
        if (status !== 200) return answer();
        const request = fromBinary(ExportTraceServiceRequestSchema, data);
        for (const rs of request.resourceSpans) {
          const resource = attributes(rs.resource?.attributes ?? []);
          for (const ss of rs.scopeSpans) {
            for (const s of ss.spans) {
              spans.push({
                serviceName: String(resource["service.name"] ?? ""),
                traceId: hex(s.traceId),
                spanId: hex(s.spanId),
                parentSpanId: hex(s.parentSpanId),
                name: s.name,
                startUnixNanos: s.startTimeUnixNano,
                endUnixNanos: s.endTimeUnixNano,
                attributes: attributes(s.attributes),
                links: s.links.map((l) => ({ traceId: hex(l.traceId), spanId: hex(l.spanId), attributes: attributes(l.attributes) })),
                events: s.events.map((e) => e.name),
              });
            }
          }
        }
        // An empty ExportTraceServiceResponse: full success.
        if (held) held.push(answer);
        else answer();
      },
      (error: Error) => res.writeHead(400).end(error.message),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  receiver.tracesUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`;
  receiver.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return receiver;
}
