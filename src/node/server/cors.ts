import type { IncomingMessage, ServerResponse } from "node:http";
import { ApiError, HTTP } from "./errors.js";

/*
 * CORS for browser clients (off unless origins are configured). A request from an allowed Origin
 * gets that origin echoed in Access-Control-Allow-Origin (never "*", even when every origin is
 * allowed, and never Allow-Credentials: the API key travels in the Authorization header, which the
 * page must send itself; cookies are never honoured). Preflight OPTIONS requests are answered here,
 * before authentication: browsers never send credentials on a preflight, and the real request that
 * follows still needs the key. Responses vary by Origin so that caches keep them apart.
 */

export interface CorsOptions {
  /** Allowed origins ("http://localhost:3000"), or ["*"] for any. */
  readonly origins: readonly string[];
}

/** How long a browser may reuse a preflight answer. */
const PREFLIGHT_MAX_AGE_S = 600;
/** Response headers a page may read: the request id, and when to retry after 429/503. */
const EXPOSED_HEADERS = "X-Request-Id, Retry-After";
/** A header-name list as browsers send it in Access-Control-Request-Headers. */
const HEADER_LIST_RE = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*$/;

/**
 * Parses "--cors" text: a comma-separated list of origins (scheme://host[:port], no path) or "*".
 * Throws an Error whose message names the bad entry.
 */
export function parseCorsOrigins(text: string): string[] {
  const items = text.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (items.length === 0) throw new Error("needs at least one origin, e.g. http://localhost:3000");
  if (items.includes("*")) {
    if (items.length > 1) throw new Error(`"*" (any origin) cannot be combined with other origins`);
    return ["*"];
  }
  return items.map((item) => {
    let url: URL;
    try {
      url = new URL(item);
    } catch {
      throw new Error(`"${item}" is not an origin like http://localhost:3000`);
    }
    if ((url.protocol !== "http:" && url.protocol !== "https:") || url.origin !== item.replace(/\/$/, "").toLowerCase()) {
      throw new Error(`"${item}" is not an origin (scheme://host[:port], no path), e.g. http://localhost:3000`);
    }
    return url.origin;
  });
}

function allowed(cors: CorsOptions, origin: string): boolean {
  return cors.origins[0] === "*" || cors.origins.includes(origin);
}

/**
 * Sets the CORS headers of a response to `req`; answers a preflight itself (returns true then).
 * `methods` are those the path allows (null: an unknown path, whose preflight is refused).
 */
export function handleCors(req: IncomingMessage, res: ServerResponse, cors: CorsOptions, methods: readonly string[] | null): boolean {
  res.setHeader("Vary", "Origin");
  const origin = req.headers.origin;
  const preflight = req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined;
  if (origin === undefined || !allowed(cors, origin)) {
    if (!preflight) return false; // not a browser's cross-origin request, or one the browser will block for lack of headers
    throw new ApiError(HTTP.forbidden, `origin ${origin ?? "(none)"} is not allowed (rwkv serve --cors)`, "invalid_request_error", null, "cors_origin_not_allowed");
  }
  res.setHeader("Access-Control-Allow-Origin", origin);
  if (!preflight) {
    res.setHeader("Access-Control-Expose-Headers", EXPOSED_HEADERS);
    return false;
  }
  const method = String(req.headers["access-control-request-method"]);
  if (methods === null || !methods.includes(method)) {
    throw new ApiError(HTTP.forbidden, `method ${method} is not allowed for ${req.url ?? "/"}${methods ? ` (allowed: ${methods.join(", ")})` : ""}`,
      "invalid_request_error", null, "cors_method_not_allowed");
  }
  const requested = req.headers["access-control-request-headers"];
  res.writeHead(HTTP.noContent, {
    "Access-Control-Allow-Methods": methods.join(", "),
    // Echo what the page asks to send (Authorization and Content-Type among them): the origin is trusted.
    ...(typeof requested === "string" && HEADER_LIST_RE.test(requested) ? { "Access-Control-Allow-Headers": requested } : {}),
    "Access-Control-Max-Age": String(PREFLIGHT_MAX_AGE_S),
    "Content-Length": "0",
  });
  res.end();
  return true;
}
