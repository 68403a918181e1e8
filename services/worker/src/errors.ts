import { status as GrpcStatus } from "@grpc/grpc-js";
import { DeviceUnavailableError, KvBudgetError } from "@strata/compute";
import { KvCapacityError, UnknownSequenceError } from "@strata/kv";
import { LayerRangeError, ModelFormatError } from "@strata/model";
import { TensorShapeError } from "@strata/proto";

/** A rejected request whose gRPC code the thrower already knows. */
export class StageRequestError extends Error {
  override name = "StageRequestError";
  constructor(
    readonly code: GrpcStatus,
    message: string,
  ) {
    super(message);
  }
}

// The one place this service turns errors into gRPC status codes.
export function grpcCodeFor(error: unknown): GrpcStatus {
  if (error instanceof StageRequestError) return error.code;
  if (error instanceof TensorShapeError || error instanceof LayerRangeError) return GrpcStatus.INVALID_ARGUMENT;
  if (error instanceof ModelFormatError || error instanceof DeviceUnavailableError) return GrpcStatus.FAILED_PRECONDITION;
  if (error instanceof UnknownSequenceError) return GrpcStatus.NOT_FOUND;
  if (error instanceof KvCapacityError || error instanceof KvBudgetError) return GrpcStatus.RESOURCE_EXHAUSTED;
  return GrpcStatus.INTERNAL;
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
