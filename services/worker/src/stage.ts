import { status as GrpcStatus } from "@grpc/grpc-js";
import { StageBlockTables, blocksForKvBudget, kvBytesPerBlock, kvBytesPerElement, kvBytesPerToken, type KvDtype } from "@strata/kv";
import { createStageCompute, type Device, type StageChunk, type StageCompute } from "@strata/compute";
import { loadLoraAdapter, type ModelConfig, type ModelSource } from "@strata/model";
import type { SequenceChunk } from "@strata/proto";
import { StageRequestError } from "./errors.ts";

export const DEFAULT_BLOCK_SIZE_TOKENS = 16;
export const DEFAULT_KV_CACHE_BYTES = 128 * 1024 * 1024;

export interface StageSpec {
  layerStart: number;
  layerEnd: number;
  stageIndex: number;
  numStages: number;
  blockSizeTokens: number;
  kvCacheBytes: number;
  /** When above 0, sizes the KV cache instead of kvCacheBytes (see StageEngineOptions.kvMemoryFraction). */
  kvMemoryFraction: number;
  device: Device;
  kvDtype: KvDtype;
  intraOpThreads: number;
  computeThread: boolean;
  maxLoraRank: number;
}

export interface ResidentAdapter {
  generation: number;
  rank: number;
}

/**
 * A loaded layer range: weights inside the engine, and the block tables (assigned by the
 * coordinator) that index its KV tensors.
 */
export class LoadedStage {
  private constructor(
    readonly spec: StageSpec,
    readonly config: ModelConfig,
    readonly engine: StageCompute,
    readonly tables: StageBlockTables,
    readonly kvBytesPerToken: number,
    readonly weightBytesRead: number,
  ) {}

  /** LoRA adapters servable on this stage, by id. */
  readonly adapters = new Map<string, ResidentAdapter>();

  /** Loads this stage's layers of a PEFT adapter; an older generation of the same id is replaced. */
  async loadAdapter(adapterId: string, path: string, generation: number): Promise<{ rank: number; bytesRead: number }> {
    if (this.spec.maxLoraRank === 0) {
      throw new StageRequestError(GrpcStatus.FAILED_PRECONDITION, "this stage was loaded without LoRA support (max_lora_rank 0)");
    }
    const held = this.adapters.get(adapterId);
    if (held && held.generation > generation) {
      throw new StageRequestError(GrpcStatus.ABORTED, `adapter ${adapterId}: generation ${generation} is older than the loaded ${held.generation}`);
    }
    let adapter;
    try {
      adapter = await loadLoraAdapter(path, this.config, { layerStart: this.spec.layerStart, layerEnd: this.spec.layerEnd });
    } catch (error) {
      throw new StageRequestError(GrpcStatus.INVALID_ARGUMENT, `adapter ${adapterId}: ${(error as Error).message}`);
    }
    if (adapter.rank > this.spec.maxLoraRank) {
      throw new StageRequestError(GrpcStatus.INVALID_ARGUMENT, `adapter ${adapterId}: rank ${adapter.rank} exceeds this stage's max LoRA rank ${this.spec.maxLoraRank}`);
    }
    this.engine.setAdapter(adapterId, adapter);
    this.adapters.set(adapterId, { generation, rank: adapter.rank });
    return { rank: adapter.rank, bytesRead: adapter.bytesRead };
  }

  /** Drops an adapter if this stage holds `upToGeneration` or older (all generations when omitted). */
  unloadAdapter(adapterId: string, upToGeneration = Infinity): boolean {
    const held = this.adapters.get(adapterId);
    if (!held || held.generation > upToGeneration) return false;
    this.adapters.delete(adapterId);
    return this.engine.removeAdapter(adapterId);
  }

  get firstStage(): boolean {
    return this.spec.layerStart === 0;
  }

  get lastStage(): boolean {
    return this.spec.layerEnd === this.config.numLayers;
  }

  static async load(source: ModelSource, spec: StageSpec, onProgress: (loaded: number, total: number) => void): Promise<LoadedStage> {
    const config = source.config;
    const firstStage = spec.layerStart === 0;
    const lastStage = spec.layerEnd === config.numLayers;
    const weights = await source.loadStage({
      layerStart: spec.layerStart,
      layerEnd: spec.layerEnd,
      withEmbedding: firstStage,
      withHead: lastStage,
      onProgress: (p) => onProgress(p.bytesLoaded, p.bytesTotal),
    });
    const numLayers = spec.layerEnd - spec.layerStart;
    const bytesPerToken = kvBytesPerToken(numLayers, config.numKvHeads, config.headDim, kvBytesPerElement(spec.kvDtype));
    // Exact block bytes of the dtype, int8 / fp8 scales included.
    const blockLayout = { numLayers, numKvHeads: config.numKvHeads, headDim: config.headDim, blockSizeTokens: spec.blockSizeTokens, kvDtype: spec.kvDtype };
    const byFraction = spec.kvMemoryFraction > 0;
    const numBlocks = byFraction ? undefined : blocksForKvBudget(spec.kvCacheBytes, blockLayout);
    if (numBlocks !== undefined && numBlocks < 1) {
      throw new StageRequestError(
        GrpcStatus.INVALID_ARGUMENT,
        `kv_cache_bytes ${spec.kvCacheBytes} holds no block of ${spec.blockSizeTokens} tokens at ${kvBytesPerBlock(blockLayout)} bytes/block (${spec.kvDtype})`,
      );
    }
    // With a fraction, the engine measures the memory left once its session is built.
    const engine = await createStageCompute(weights, {
      ...(byFraction ? { kvMemoryFraction: spec.kvMemoryFraction } : { numBlocks }),
      blockSizeTokens: spec.blockSizeTokens,
      firstStage,
      lastStage,
      device: spec.device,
      intraOpThreads: spec.intraOpThreads,
      computeThread: spec.computeThread,
      kvDtype: spec.kvDtype,
      maxLoraRank: spec.maxLoraRank,
    });
    const tables = new StageBlockTables(engine.numBlocks, spec.blockSizeTokens);
    return new LoadedStage(spec, config, engine, tables, bytesPerToken, source.bytesRead());
  }

  /**
   * Checks a micro-batch against this stage's state without changing it, then records the
   * chunks' block tables. Either every chunk is taken or the batch is rejected with nothing changed.
   */
  admit(chunks: readonly SequenceChunk[]): StageChunk[] {
    if (chunks.length === 0) throw new StageRequestError(GrpcStatus.INVALID_ARGUMENT, "micro-batch has no sequences");
    const seen = new Set<number>();
    for (const c of chunks) {
      if (seen.has(c.seqId)) throw new StageRequestError(GrpcStatus.INVALID_ARGUMENT, `sequence ${c.seqId} appears twice in one micro-batch`);
      seen.add(c.seqId);
      if (c.numTokens < 1) throw new StageRequestError(GrpcStatus.INVALID_ARGUMENT, `sequence ${c.seqId}: num_tokens must be at least 1`);
      const end = c.startPosition + c.numTokens;
      if (end > this.config.maxPositionEmbeddings) {
        throw new StageRequestError(
          GrpcStatus.OUT_OF_RANGE,
          `sequence ${c.seqId}: positions up to ${end} exceed the model's context of ${this.config.maxPositionEmbeddings}`,
        );
      }
      if (this.firstStage) {
        if (c.tokenIds.length !== c.numTokens) {
          throw new StageRequestError(GrpcStatus.INVALID_ARGUMENT, `sequence ${c.seqId}: ${c.tokenIds.length} token ids for num_tokens ${c.numTokens}`);
        }
        const bad = c.tokenIds.find((id) => id >= this.config.vocabSize);
        if (bad !== undefined) {
          throw new StageRequestError(GrpcStatus.INVALID_ARGUMENT, `sequence ${c.seqId}: token id ${bad} is outside the vocabulary of ${this.config.vocabSize}`);
        }
      }
      if (c.adapter !== "" && !this.adapters.has(c.adapter)) {
        throw new StageRequestError(GrpcStatus.NOT_FOUND, `sequence ${c.seqId}: unknown LoRA adapter "${c.adapter}" on this stage`);
      }
      const known = this.tables.has(c.seqId);
      if (c.newSequence && known) {
        throw new StageRequestError(GrpcStatus.ALREADY_EXISTS, `sequence ${c.seqId} already exists on this stage`);
      }
      if (!c.newSequence && !known) {
        throw new StageRequestError(GrpcStatus.NOT_FOUND, `unknown sequence id ${c.seqId}: a chunk at position ${c.startPosition} needs its earlier KV on this stage`);
      }
      if (known && this.tables.length(c.seqId) !== c.startPosition) {
        throw new StageRequestError(
          GrpcStatus.FAILED_PRECONDITION,
          `sequence ${c.seqId} holds ${this.tables.length(c.seqId)} positions on this stage, but the chunk starts at ${c.startPosition}`,
        );
      }
      try {
        this.tables.check(c.seqId, end, c.blockIds);
      } catch (error) {
        throw new StageRequestError(GrpcStatus.INVALID_ARGUMENT, (error as Error).message);
      }
    }
    return chunks.map((c) => ({
      seqId: c.seqId,
      startPosition: c.startPosition,
      numTokens: c.numTokens,
      tokenIds: this.firstStage ? c.tokenIds : undefined,
      blockTable: this.tables.assign(c.seqId, c.startPosition + c.numTokens, c.blockIds, c.startPosition),
      adapter: c.adapter === "" ? undefined : c.adapter,
    }));
  }
}
