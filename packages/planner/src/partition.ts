/** Layer ranges [start, end), one per stage, contiguous and covering every layer. */
export type Partition = Array<[number, number]>;

export class PartitionError extends Error {
  override name = "PartitionError";
}

/** Splits layers as evenly as possible; earlier stages take the remainder (they also embed). */
export function evenPartition(numLayers: number, numStages: number): Partition {
  if (!Number.isInteger(numStages) || numStages < 1) throw new PartitionError(`number of workers must be a positive integer, got ${numStages}`);
  if (numStages > numLayers) throw new PartitionError(`${numStages} workers cannot share ${numLayers} layers: each stage needs at least one layer`);
  const base = Math.floor(numLayers / numStages);
  const extra = numLayers % numStages;
  const partition: Partition = [];
  let start = 0;
  for (let s = 0; s < numStages; s++) {
    const size = base + (s < extra ? 1 : 0);
    partition.push([start, start + size]);
    start += size;
  }
  return partition;
}

/** Parses "0-1,1-4,4-5" and checks it against the model's layer count. */
export function parsePartition(spec: string, numLayers: number): Partition {
  const partition = spec.split(",").map((part): [number, number] => {
    const match = /^\s*(\d+)\s*-\s*(\d+)\s*$/.exec(part);
    if (!match) throw new PartitionError(`bad partition "${part}": expected START-END, e.g. 0-2,2-5`);
    return [Number(match[1]), Number(match[2])];
  });
  validatePartition(partition, numLayers);
  return partition;
}

export function validatePartition(partition: Partition, numLayers: number): void {
  if (partition.length === 0) throw new PartitionError("partition has no stages");
  let expectedStart = 0;
  for (const [start, end] of partition) {
    if (start !== expectedStart) throw new PartitionError(`partition stage [${start}, ${end}) should start at layer ${expectedStart}: ranges must be contiguous from 0`);
    if (end <= start) throw new PartitionError(`partition stage [${start}, ${end}) is empty`);
    expectedStart = end;
  }
  if (expectedStart !== numLayers) throw new PartitionError(`partition ends at layer ${expectedStart}, but the model has ${numLayers} layers`);
}

/** Every partition of numLayers into numStages non-empty contiguous ranges (for exhaustive tests). */
export function allPartitions(numLayers: number, numStages: number): Partition[] {
  if (numStages === 1) return [[[0, numLayers]]];
  const out: Partition[] = [];
  for (let firstEnd = 1; firstEnd <= numLayers - (numStages - 1); firstEnd++) {
    for (const rest of allPartitions(numLayers - firstEnd, numStages - 1)) {
      out.push([[0, firstEnd], ...rest.map(([a, b]): [number, number] => [a + firstEnd, b + firstEnd])]);
    }
  }
  return out;
}
