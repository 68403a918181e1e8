import { randomBytes } from "node:crypto";
// Subject names are the contract between coordinator and workers: one place builds them.
// Eviction and adapter events carry the cluster's scope (one subject token; see newEventScope and
// LoadRequest.event_scope): sequence ids and adapter names are only unique within a cluster, and
// clusters may share a NATS server. Block events are named by pool id, which is unique on its own,
// so consumers (routers) can follow every pool with one wildcard.
export const SUBJECTS = {
  kvEvict: (scope: string, seqId: number) => `strata.kv.evict.${scope}.${seqId}`,
  kvEvictAll: (scope: string) => `strata.kv.evict.${scope}.*`,
  // Adapter ids are one subject token (no dots, spaces or wildcards; the coordinator checks).
  adapterSwitch: (scope: string, adapterId: string) => `strata.adapter.${scope}.${adapterId}.switch`,
  adapterSwitchAll: (scope: string) => `strata.adapter.${scope}.*.switch`,
  kvBlockEvents: (poolId: string) => `strata.kv.events.${poolId}`,
  kvBlockEventsAll: "strata.kv.events.*",
} as const;

// The characters a name may use to be one NATS subject token here (no dots, spaces or wildcards).
const SUBJECT_TOKEN = /^[A-Za-z0-9_-]+$/;
const NOT_SUBJECT_TOKEN_CHAR = /[^A-Za-z0-9_-]/g;

/** `raw` made one subject token: any other character becomes "_" (a host name's dots, say). */
export function toSubjectToken(raw: string): string {
  return raw.replace(NOT_SUBJECT_TOKEN_CHAR, "_");
}

/** Checks that `scope` is one NATS subject token (letters, digits, _ and -), as subjects need. */
export function checkEventScope(scope: string): string {
  if (!SUBJECT_TOKEN.test(scope)) throw new RangeError(`event scope must be letters, digits, _ or - (one NATS subject token), got "${scope}"`);
  return scope;
}

/** A fresh scope for one cluster: random, so two clusters (even in one process) never share one. */
export function newEventScope(): string {
  return randomBytes(8).toString("hex");
}
