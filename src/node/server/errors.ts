import type { ServerResponse } from "node:http";

/*
 * OpenAI-style error bodies: `{ "error": { "message", "type", "param", "code" } }`, so the official
 * clients raise their typed errors (BadRequestError, AuthenticationError, ...) with our message.
 */

export type ErrorType = "invalid_request_error" | "rate_limit_error" | "server_error";

export interface ErrorBody {
  error: { message: string; type: ErrorType; param: string | null; code: string | null };
}

/** An error that becomes an HTTP response: status, OpenAI type, the offending parameter and a code. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Extra response headers (Allow for 405, Retry-After for 429/503). */
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  toBody(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** HTTP status codes used by the server, by name. */
export const HTTP = {
  ok: 200,
  noContent: 204,
  badRequest: 400,
  unauthorized: 401,
  forbidden: 403,
  notFound: 404,
  methodNotAllowed: 405,
  payloadTooLarge: 413,
  tooManyRequests: 429,
  internal: 500,
  unavailable: 503,
} as const;

/** 400 for a parameter with a bad value or type. */
export const invalidParam = (param: string, message: string, code = "invalid_value"): ApiError =>
  new ApiError(HTTP.badRequest, message, "invalid_request_error", param, code);

/** Writes `error` as the JSON response (only before any header was sent). */
export function sendError(res: ServerResponse, error: ApiError): void {
  sendJson(res, error.status, error.toBody(), error.headers);
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Readonly<Record<string, string>> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { ...headers, "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}
