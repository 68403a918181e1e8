import * as grpc from "@grpc/grpc-js";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLED_MODEL_DIR } from "@strata/model";
import {
  DType,
  DescribeRequestSchema,
  ForwardRequestSchema,
  FreeSequencesRequestSchema,
  LoadRequestSchema,
  ResultsRequestSchema,
  SequenceChunkSchema,
  TensorSchema,
  WorkerService,
  grpcChannelOptions,
  grpcClientConstructor,
  type DescribeResponse,
  type ForwardResponse,
  type ResultsBatch,
  type StageError,
  type Tensor,
} from "@strata/proto";
import { ContextLengthError, LocalCluster, type WorkerStub } from "../src/index.ts";
import { GREEDY, loadGreedyOracle, useNats } from "../../../test/support/cluster.ts";

// Bad input gets a gRPC status with a clear detail, and the workers keep serving everyone else:
// a generation in flight while the bad messages arrive, and one after them, both reproduce the
// greedy oracle.

const oracle = loadGreedyOracle();
const generatedIds = oracle.token_ids.slice(oracle.prompt_token_ids.length);
const HIDDEN = 64; // stories260K
const CONTEXT = 512;

const WorkerClient = grpcClientConstructor(WorkerService);
type Stub = WorkerStub;

const nats = useNats();
let cluster: LocalCluster;
let stubs: Stub[];
let results: grpc.ClientReadableStream<ResultsBatch>;
const resultErrors = new Map<number, StageError>();
const resultWaiters = new Map<number, (e: StageError) => void>();
// Batch ids far above the coordinator's own (which count up from 1), so its pending batches never match ours.
let nextBatchId = 4_000_000_000;

beforeAll(async () => {
  await nats.start();
  cluster = await LocalCluster.start({ modelDir: BUNDLED_MODEL_DIR, workers: 3, natsUrl: nats.url(), inProcessWorkers: true });
  expect(cluster.partition).toEqual([[0, 2], [2, 4], [4, 5]]);
  stubs = cluster.pipeline.addresses.map((a) => new WorkerClient(a, grpc.credentials.createInsecure(), grpcChannelOptions) as unknown as Stub);
  // Our own subscription to the last stage: a rejected batch must reach Results too.
  results = stubs[2].results(create(ResultsRequestSchema, {}));
  results.on("data", (batch: ResultsBatch) => {
    for (const msg of batch.results) {
      if (!msg.error) continue;
      resultErrors.set(msg.batchId, msg.error);
      resultWaiters.get(msg.batchId)?.(msg.error);
    }
  });
  results.on("error", () => {});
  await untilResultsSubscribed();
});
afterAll(async () => {
  results?.cancel();
  for (const s of stubs ?? []) s.close();
  await cluster?.stop();
  await nats.stop();
});

/** Sends one micro-batch on a fresh Forward stream; resolves with the rejection sent back to the sender. */
function forwardExpectingRejection(
  stage: number,
  req: { seqs: MessageInitShape<typeof SequenceChunkSchema>[]; hidden?: Tensor; numSteps?: number; step?: number; runTokenIds?: number[] },
): Promise<{ batchId: number; error: StageError }> {
  const batchId = nextBatchId++;
  const stream = stubs[stage].forward();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`stage ${stage} sent no rejection for batch ${batchId}`)), 30_000);
    stream.on("data", (reply: ForwardResponse) => {
      if (reply.batchId !== batchId || !reply.error) return;
      clearTimeout(timer);
      stream.end();
      resolve({ batchId, error: reply.error });
    });
    stream.on("error", () => {});
    stream.write(create(ForwardRequestSchema, { ...req, batchId }));
  });
}

function resultsErrorFor(batchId: number): Promise<StageError> {
  const seen = resultErrors.get(batchId);
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`batch ${batchId}'s failure never reached the Results stream`)), 30_000);
    resultWaiters.set(batchId, (e) => {
      clearTimeout(timer);
      resolve(e);
    });
  });
}

// The server registers a Results subscriber asynchronously; probe until one rejection arrives there.
async function untilResultsSubscribed(): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const { batchId } = await forwardExpectingRejection(2, { seqs: [] });
    await new Promise((r) => setTimeout(r, 50));
    if (resultErrors.has(batchId)) return;
  }
  throw new Error("Results subscription never saw a rejection");
}

function describeStage(stage: number): Promise<DescribeResponse> {
  return new Promise((resolve, reject) => stubs[stage].describe(create(DescribeRequestSchema, {}), (err, res) => (err ? reject(err) : resolve(res))));
}

function hiddenTensor(shape: number[], bytes: number) {
  return create(TensorSchema, { dtype: DType.F32, shape, data: new Uint8Array(bytes) });
}

function greedyStory(): Promise<number[]> {
  return cluster.engine.generate({ promptIds: oracle.prompt_token_ids, maxTokens: generatedIds.length, sampling: GREEDY }).then((r) => r.tokenIds);
}

describe("bad input gets a clear status and loses nothing else", () => {
  it("every rejection names what was wrong; a generation in flight and one after both finish intact", async () => {
    const inFlight = greedyStory();

    // A layer range the model does not have.
    const loadError = await new Promise<grpc.ServiceError>((resolve, reject) => {
      const call = stubs[1].load(create(LoadRequestSchema, { modelDir: BUNDLED_MODEL_DIR, layerStart: 3, layerEnd: 9, stageIndex: 1, numStages: 3 }));
      call.on("data", () => {});
      call.on("error", resolve);
      call.on("end", () => reject(new Error("a load of layers [3, 9) of 5 succeeded")));
    });
    expect(loadError.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(loadError.details).toContain("[3, 9)");
    expect(loadError.details).toMatch(/5 layers/);
    // The stage it already had stays loaded.
    expect(await describeStage(1)).toMatchObject({ loaded: true, layerStart: 2, layerEnd: 4 });

    // Hidden states with the wrong byte length, then with the wrong shape, to a middle stage.
    const seqs = [{ seqId: 900_001, startPosition: 0, numTokens: 3 }];
    const wrongBytes = await forwardExpectingRejection(1, { seqs, hidden: hiddenTensor([3, HIDDEN], 3 * HIDDEN * 4 - 4) });
    expect(wrongBytes.error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(wrongBytes.error.message).toContain(`[3, ${HIDDEN}]`);
    expect(wrongBytes.error.message).toContain(String(3 * HIDDEN * 4));
    expect(wrongBytes.error.stageIndex).toBe(1);

    const wrongShape = await forwardExpectingRejection(1, { seqs, hidden: hiddenTensor([3, 32], 3 * 32 * 4) });
    expect(wrongShape.error.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(wrongShape.error.message).toContain("[3, 32]");
    expect(wrongShape.error.message).toContain(`expected [3, ${HIDDEN}]`);

    // A chunk for a sequence the first stage never saw, past position 0.
    const unknown = await forwardExpectingRejection(0, { seqs: [{ seqId: 900_002, startPosition: 5, numTokens: 1, tokenIds: [1] }] });
    expect(unknown.error.code).toBe(grpc.status.NOT_FOUND);
    expect(unknown.error.message).toMatch(/unknown sequence id 900002/);

    // A decode run's later step (which carries no chunks) for a run this stage never began.
    const orphanStep = await forwardExpectingRejection(0, { seqs: [], numSteps: 8, step: 3, runTokenIds: [5] });
    expect(orphanStep.error.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(orphanStep.error.message).toMatch(/decode run \d+: step 3 came without its chunks/);

    // Each rejection also travelled on to the last stage's Results stream, code and detail intact.
    for (const r of [wrongBytes, wrongShape, unknown, orphanStep]) {
      const viaResults = await resultsErrorFor(r.batchId);
      expect(viaResults.code).toBe(r.error.code);
      expect(viaResults.message).toBe(r.error.message);
    }

    // Freeing a sequence no stage holds.
    const freeError = await new Promise<grpc.ServiceError>((resolve, reject) =>
      stubs[1].freeSequences(create(FreeSequencesRequestSchema, { seqIds: [900_003] }), (err) => (err ? resolve(err) : reject(new Error("freeing an unknown sequence succeeded")))),
    );
    expect(freeError.code).toBe(grpc.status.NOT_FOUND);
    expect(freeError.details).toMatch(/unknown sequence ids?:? 900003/);

    // Nothing of the rejected batches stayed behind.
    for (let stage = 0; stage < 3; stage++) {
      const ids = (await describeStage(stage)).seqIds;
      expect(ids).not.toContain(900_001);
      expect(ids).not.toContain(900_002);
    }

    expect(await inFlight).toEqual(generatedIds);
    expect(await greedyStory()).toEqual(generatedIds);
    expect(await cluster.waitForBlocksFreed()).toEqual([0, 0, 0]);
  });

  it("a prompt longer than the context is refused with ContextLengthError, and serving goes on", async () => {
    const tooLong = Array.from({ length: CONTEXT + 88 }, (_, i) => 1 + (i % 400));
    const refuse = (promptIds: number[], maxTokens: number) =>
      (async () => cluster.engine.generate({ promptIds, maxTokens, sampling: GREEDY }))();
    await expect(refuse(tooLong, 10)).rejects.toBeInstanceOf(ContextLengthError);
    await expect(refuse(tooLong, 10)).rejects.toThrow(/maximum context length is 512/);
    // Fits alone, not with what it asks to generate.
    await expect(refuse(tooLong.slice(0, 500), 20)).rejects.toBeInstanceOf(ContextLengthError);
    expect(await greedyStory()).toEqual(generatedIds);
    expect(await cluster.waitForBlocksFreed()).toEqual([0, 0, 0]);
  });
});
