import { describe, expect, it } from "vitest";
import { traceSampleRatioFromEnv } from "../src/index.ts";

describe("traceSampleRatioFromEnv", () => {
  it("reads OTEL_TRACES_SAMPLER and its argument as OpenTelemetry defines them", () => {
    expect(traceSampleRatioFromEnv({})).toBe(1);
    expect(traceSampleRatioFromEnv({ OTEL_TRACES_SAMPLER: "always_on" })).toBe(1);
    expect(traceSampleRatioFromEnv({ OTEL_TRACES_SAMPLER: "parentbased_always_off" })).toBe(0);
    expect(traceSampleRatioFromEnv({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.25" })).toBe(0.25);
    expect(traceSampleRatioFromEnv({ OTEL_TRACES_SAMPLER: "parentbased_traceidratio" })).toBe(1);
  });

  it("refuses samplers it cannot honour and ratios outside [0, 1]", () => {
    expect(() => traceSampleRatioFromEnv({ OTEL_TRACES_SAMPLER: "jaeger_remote" })).toThrow(/not supported/);
    expect(() => traceSampleRatioFromEnv({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "2" })).toThrow(/between 0 and 1/);
  });
});
