import type { EventBus } from "@strata/events";
import { ApiError } from "./api-errors.ts";
import type { Engine } from "./engine.ts";
import type { ModelRegistry } from "./models.ts";
import type { PipelineClient } from "./pipeline-client.ts";

// Adapter ids travel in NATS subjects (strata.adapter.<scope>.<id>.switch: one token) and in `model` fields.
const ADAPTER_ID = /^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}$/;

interface LoadedAdapter {
  path: string;
  generation: number;
  rank: number;
}

/**
 * LoRA adapters across the pipeline: each load puts the adapter's layers on every stage (at a
 * new generation, which also keys its cached KV blocks) before its name is served; an unload
 * stops serving the name, lets running requests finish, then invalidates it on every worker.
 */
export class AdapterManager {
  private readonly loaded = new Map<string, LoadedAdapter>();
  private nextGeneration = 1;
  loads = 0;

  constructor(
    private readonly pipeline: PipelineClient,
    private readonly events: EventBus,
    private readonly engine: Engine,
    readonly models: ModelRegistry,
    readonly maxLoraRank: number,
  ) {}

  get resident(): number {
    return this.loaded.size;
  }

  async load(id: string, path: string): Promise<{ generation: number; rank: number }> {
    if (this.maxLoraRank === 0) {
      throw new ApiError(400, "invalid_request_error", "this server was started without LoRA support: start it with --max-lora-rank N (or --lora name=path)", "lora_name", "lora_disabled");
    }
    if (!ADAPTER_ID.test(id)) {
      throw new ApiError(400, "invalid_request_error", `adapter name "${id}" must match ${ADAPTER_ID.source}`, "lora_name", "invalid_adapter_name");
    }
    if (this.models.get(id)) {
      throw new ApiError(400, "invalid_request_error", `model name "${id}" is already served; unload it first`, "lora_name", "adapter_already_loaded");
    }
    const generation = this.nextGeneration++;
    const results = await Promise.allSettled(this.pipeline.stages.map((_, stage) => this.pipeline.loadAdapter(stage, id, path, generation)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) {
      // All stages or none: drop it where it did load.
      this.events.publishAdapterInvalidate(id, generation);
      throw new ApiError(400, "invalid_request_error", `cannot load adapter "${id}" from ${path}: ${(failed.reason as Error).message}`, "lora_path", "adapter_load_failed");
    }
    const rank = (results[0] as PromiseFulfilledResult<{ rank: number }>).value.rank;
    this.loaded.set(id, { path, generation, rank });
    this.models.registerAdapter(id, generation);
    this.loads++;
    return { generation, rank };
  }

  async unload(id: string): Promise<void> {
    const adapter = this.loaded.get(id);
    if (!adapter) throw new ApiError(404, "invalid_request_error", `no LoRA adapter named "${id}" is loaded`, "lora_name", "adapter_not_found");
    // New requests stop here; the ones running finish on the adapter before it goes.
    this.models.unregisterAdapter(id);
    this.loaded.delete(id);
    await this.engine.adapterDrained(id);
    this.events.publishAdapterInvalidate(id, adapter.generation);
    // The event is the broadcast; the RPCs make the unload complete when this returns.
    await Promise.all(this.pipeline.stages.map((_, stage) => this.pipeline.unloadAdapter(stage, id).catch(() => false)));
  }

  /** Puts every loaded adapter back on stages that restarted empty. */
  async reloadOn(stages: number[]): Promise<void> {
    for (const [id, a] of this.loaded) {
      await Promise.all(stages.map((stage) => this.pipeline.loadAdapter(stage, id, a.path, a.generation)));
    }
  }
}
