// Subject names are the contract between coordinator and workers: one place builds them.
export const SUBJECTS = {
  kvEvict: (seqId: number) => `strata.kv.evict.${seqId}`,
  kvEvictAll: "strata.kv.evict.*",
} as const;
