export { evenPartition, parsePartition, validatePartition, allPartitions, PartitionError, type Partition } from "./partition.ts";
