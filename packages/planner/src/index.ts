export { evenPartition, parsePartition, validatePartition, allPartitions, PartitionError, type Partition } from "./partition.ts";
export { balancedPartition, layerDecodeBytes, layerWeightCount, lmHeadDecodeBytes, lmHeadWeightCount, DEFAULT_PLAN_LOAD, type LayerCostShape, type PlanLoad } from "./balanced.ts";
