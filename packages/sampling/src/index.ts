export { argmax, sampleToken, logSoftmax, GREEDY, type SamplingParams } from "./sampler.ts";
export { SeededRandom } from "./random.ts";
