import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import { z } from "zod";
import { SchedulerCapacityError } from "@strata/scheduler";
import { ContextLengthError, RequestAbortedError, RequestValidationError } from "./engine.ts";
import { StageFailure } from "./pipeline-client.ts";

/** An error with its HTTP status and OpenAI error fields already decided. */
export class ApiError extends Error {
  override name = "ApiError";
  constructor(
    readonly status: ContentfulStatusCode,
    readonly type: string,
    message: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export const invalidRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, "invalid_request_error", message, param, code);

function fromZod(error: z.ZodError): ApiError {
  const issue = error.issues[0];
  const path = issue.path.join(".");
  return invalidRequest(`${path || "body"}: ${issue.message}`, path || null, "invalid_type");
}

// The one place the API turns errors into HTTP statuses and OpenAI error bodies.
export function toApiError(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  if (error instanceof z.ZodError) return fromZod(error);
  if (error instanceof ContextLengthError) return invalidRequest(error.message, "max_tokens", "context_length_exceeded");
  if (error instanceof SchedulerCapacityError) return invalidRequest(error.message, "max_tokens", "kv_capacity_exceeded");
  if (error instanceof RequestValidationError) return invalidRequest(error.message);
  // The client is gone (or the server is stopping); nobody reads this status but the logs.
  if (error instanceof RequestAbortedError) return new ApiError(503, "server_error", error.message, null, "request_aborted");
  if (error instanceof StageFailure) return new ApiError(500, "server_error", error.message, null, "stage_failure");
  return new ApiError(500, "server_error", error instanceof Error ? error.message : String(error));
}

export function errorBody(error: ApiError): { error: { message: string; type: string; param: string | null; code: string | null } } {
  return { error: { message: error.message, type: error.type, param: error.param, code: error.code } };
}

export function errorResponse(c: Context, error: unknown): Response {
  const apiError = toApiError(error);
  for (const [name, value] of Object.entries(apiError.headers)) c.header(name, value);
  return c.json(errorBody(apiError), apiError.status);
}
