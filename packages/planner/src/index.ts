export { evenPartition, parsePartition, validatePartition, allPartitions, PartitionError, type Partition } from "./partition.ts";
export { balancedPartition, layerMacsPerToken, lmHeadMacsPerToken, type LayerCostShape } from "./balanced.ts";
