import { ApiError } from "./api-errors.ts";

export interface ServedModel {
  /** The name clients pass as `model`. */
  id: string;
  kind: "base" | "adapter";
  /** For an adapter, the base model it applies to. */
  base?: string;
  /** For an adapter, its load generation (bumped on every load of the name). */
  generation?: number;
  createdUnixS: number;
}

/**
 * The names this server answers to: the base model and every registered LoRA adapter. The API
 * resolves a request's `model` here; unknown names are a 404.
 */
export class ModelRegistry {
  private readonly models = new Map<string, ServedModel>();

  constructor(readonly baseModel: string) {
    this.models.set(baseModel, { id: baseModel, kind: "base", createdUnixS: Math.floor(Date.now() / 1000) });
  }

  registerAdapter(name: string, generation = 1): ServedModel {
    if (this.models.has(name)) throw new Error(`model name "${name}" is already registered`);
    const model: ServedModel = { id: name, kind: "adapter", base: this.baseModel, generation, createdUnixS: Math.floor(Date.now() / 1000) };
    this.models.set(name, model);
    return model;
  }

  unregisterAdapter(name: string): boolean {
    const model = this.models.get(name);
    return model?.kind === "adapter" ? this.models.delete(name) : false;
  }

  list(): ServedModel[] {
    return [...this.models.values()];
  }

  get(name: string): ServedModel | undefined {
    return this.models.get(name);
  }

  /** The model a request names; no name means the base model. */
  resolve(name: string | undefined | null): ServedModel {
    if (name === undefined || name === null || name === "") return this.models.get(this.baseModel)!;
    const model = this.models.get(name);
    if (!model) {
      throw new ApiError(404, "invalid_request_error", `The model \`${name}\` does not exist. Served: ${[...this.models.keys()].join(", ")}`, "model", "model_not_found");
    }
    return model;
  }
}
