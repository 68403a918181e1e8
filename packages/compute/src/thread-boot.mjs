// A worker thread's first module: TypeScript sources load through tsx, which a thread does not
// inherit from its process's --import, then the thread's own entry module runs.
import { workerData } from "node:worker_threads";
import { register } from "tsx/esm/api";

register();
await import(workerData.entry);
