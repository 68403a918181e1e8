// Subject names are the contract between coordinator and workers: one place builds them.
export const SUBJECTS = {
  kvEvict: (seqId: number) => `strata.kv.evict.${seqId}`,
  kvEvictAll: "strata.kv.evict.*",
  adapterInvalidate: (adapterId: string) => `strata.adapter.invalidate.${adapterId}`,
  // Adapter ids may contain dots (more subject tokens), so the wildcard takes the rest.
  adapterInvalidateAll: "strata.adapter.invalidate.>",
} as const;
