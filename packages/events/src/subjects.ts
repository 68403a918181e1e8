// Subject names are the contract between coordinator and workers: one place builds them.
export const SUBJECTS = {
  kvEvict: (seqId: number) => `strata.kv.evict.${seqId}`,
  kvEvictAll: "strata.kv.evict.*",
  // Adapter ids are one subject token (no dots, spaces or wildcards; the coordinator checks).
  adapterSwitch: (adapterId: string) => `strata.adapter.${adapterId}.switch`,
  adapterSwitchAll: "strata.adapter.*.switch",
  kvBlockEvents: (poolId: string) => `strata.kv.events.${poolId}`,
  kvBlockEventsAll: "strata.kv.events.*",
} as const;
