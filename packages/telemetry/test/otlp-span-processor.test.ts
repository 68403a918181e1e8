import { afterEach, describe, expect, it } from "vitest";
import { ROOT_CONTEXT, TraceFlags, trace } from "@opentelemetry/api";
import { setGlobalErrorHandler } from "@opentelemetry/core";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { TracerProvider } from "@opentelemetry/sdk-trace";
import { startOtlpReceiver, type OtlpReceiver } from "../../../test/support/otlp-receiver.ts";
import { OtlpHttpExporter } from "../src/otlp-exporter.ts";
import { OtlpSpanProcessor, type OtlpSpanProcessorOptions } from "../src/otlp-span-processor.ts";

let receiver: OtlpReceiver | undefined;
afterEach(async () => {
  setGlobalErrorHandler(() => {});
  await receiver?.close();
  receiver = undefined;
});

async function setUp(opts: OtlpSpanProcessorOptions) {
  receiver = await startOtlpReceiver();
  const processor = new OtlpSpanProcessor(new OtlpHttpExporter(receiver.tracesUrl, { timeoutMs: 5000 }), opts);
  const provider = new TracerProvider({ resource: resourceFromAttributes({ "service.name": "strata-test" }), spanProcessors: [processor] });
  const tracer = provider.getTracer("strata");
  const end = (name: string) => tracer.startSpan(name, {}, ROOT_CONTEXT).end();
  return { receiver, processor, end, tracer };
}

const names = (r: OtlpReceiver) => r.spans.map((s) => s.name);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("OtlpSpanProcessor", () => {
  it("sends the spans that ended within the delay as one request, once each, unsampled ones not at all", async () => {
    const { receiver, processor, end, tracer } = await setUp({ scheduledDelayMs: 100 });
    end("a");
    end("b");
    const unsampled = trace.setSpanContext(ROOT_CONTEXT, { traceId: "0af7651916cd43dd8448eb211c80319c", spanId: "b7ad6b7169203331", traceFlags: TraceFlags.NONE });
    tracer.startSpan("not sampled", {}, unsampled).end();
    end("c");
    expect(receiver.requests).toBe(0);
    await sleep(400);
    expect(receiver.requests).toBe(1);
    expect(names(receiver)).toEqual(["a", "b", "c"]);
    expect(receiver.spans.every((s) => s.serviceName === "strata-test")).toBe(true);
    end("d");
    await processor.forceFlush();
    expect(receiver.requests).toBe(2);
    expect(names(receiver)).toEqual(["a", "b", "c", "d"]);
  });

  it("sends early once a request's spans reach maxExportBytes, without waiting for the delay", async () => {
    const { receiver, processor, end } = await setUp({ scheduledDelayMs: 60_000, maxExportBytes: 500 });
    for (let i = 0; i < 40; i++) end(`span ${i}`);
    await sleep(200);
    const early = receiver.requests;
    expect(early).toBeGreaterThan(1);
    await processor.forceFlush();
    expect(names(receiver)).toEqual(Array.from({ length: 40 }, (_, i) => `span ${i}`));
  });

  it("reports a refused request to the global error handler and goes on with the next", async () => {
    const { receiver, processor, end } = await setUp({ scheduledDelayMs: 60_000 });
    const errors: string[] = [];
    setGlobalErrorHandler((e) => errors.push(String((e as Error).message ?? e)));
    receiver.statusFor = (n) => (n === 1 ? 503 : 200);
    end("lost with the refused request");
    await processor.forceFlush();
    expect(errors).toEqual([expect.stringMatching(/HTTP 503/)]);
    end("next");
    await processor.forceFlush();
    expect(names(receiver)).toEqual(["next"]);
  });

  it("drops spans beyond maxQueueBytes while the collector does not answer, and counts them", async () => {
    const { receiver, processor, end } = await setUp({ scheduledDelayMs: 60_000, maxExportBytes: 1, maxQueueBytes: 300 });
    receiver.pause();
    for (let i = 0; i < 20; i++) end(`span ${i}`);
    await sleep(200);
    // Each accepted span went out on its own (maxExportBytes 1) and waits for its answer.
    const accepted = 20 - processor.droppedSpans;
    expect(accepted).toBeGreaterThan(0);
    expect(processor.droppedSpans).toBeGreaterThan(0);
    receiver.resume();
    await processor.forceFlush();
    // Once answered, spans are queued again.
    end("after");
    await processor.forceFlush();
    expect(names(receiver)).toEqual([...Array.from({ length: accepted }, (_, i) => `span ${i}`), "after"]);
  });

  it("sends what is waiting at shutdown and nothing after", async () => {
    const { receiver, processor, end } = await setUp({ scheduledDelayMs: 60_000 });
    end("last");
    await processor.shutdown();
    end("too late");
    await sleep(50);
    expect(names(receiver)).toEqual(["last"]);
  });
});
