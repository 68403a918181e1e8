export { EventBus, type EventCount, type EvictReason } from "./event-bus.ts";
export { checkEventScope, newEventScope, SUBJECTS, toSubjectToken } from "./subjects.ts";
export { startNatsServer, findNatsServerBinary, freePort, isReachable, NatsServerUnavailable, type NatsServerProcess } from "./nats-server.ts";
export { KvBlockIndex, type KvBlockSnapshot } from "./kv-block-index.ts";
