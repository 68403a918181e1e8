import { create } from "@bufbuild/protobuf";
import { DescribeResponseSchema, KvStatsSchema, type DescribeResponse } from "@strata/proto";
import { TRACING_OFF } from "@strata/telemetry";
import { describe, expect, it } from "vitest";
import { StageTelemetry } from "../src/telemetry.ts";

describe("worker metrics scrape", () => {
  it("describes the stage once per scrape, and every KV series reads that one description", async () => {
    let calls = 0;
    const describeStage = (): DescribeResponse => {
      calls++;
      // Each description differs, so series read from two of them would disagree.
      const used = 10 * calls;
      return create(DescribeResponseSchema, {
        loaded: true,
        stageIndex: 1,
        kv: create(KvStatsSchema, { blocksTotal: 100, blocksUsed: used, blocksFree: 100 - used - 5, blocksCached: 5, sequences: calls, prefixQueries: BigInt(calls) }),
      });
    };
    const telemetry = new StageTelemetry("worker-t", describeStage, TRACING_OFF);
    const value = (text: string, name: string) => Number(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, "m").exec(text)?.[1]);

    const first = await telemetry.registry.metrics();
    expect(calls).toBe(1);
    expect(value(first, "strata_kv_blocks_used")).toBe(10);
    expect(value(first, "strata_kv_blocks_used") + value(first, "strata_kv_blocks_free") + value(first, "strata_kv_blocks_cached")).toBe(value(first, "strata_kv_blocks_total"));
    expect(value(first, "strata_kv_sequences")).toBe(1);
    expect(value(first, "strata_stage_prefix_queries_total")).toBe(1);

    // The next scrape, a turn of the event loop later, describes the stage afresh.
    await new Promise<void>((resolve) => setImmediate(resolve));
    const second = await telemetry.registry.metrics();
    expect(calls).toBe(2);
    expect(value(second, "strata_kv_blocks_used")).toBe(20);
    expect(value(second, "strata_kv_sequences")).toBe(2);
  });
});
