export { argmax, isGreedy, sampleToken, logSoftmax, GREEDY, type SamplingParams } from "./sampler.ts";
export { SeededRandom } from "./random.ts";
