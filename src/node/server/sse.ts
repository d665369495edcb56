import type { ServerResponse } from "node:http";
import { HTTP } from "./errors.js";

/*
 * Server-sent events as OpenAI streams them: one `data: {json}\n\n` event per chunk and a final
 * `data: [DONE]\n\n`. No `event:` names or ids: the official clients parse only `data:` lines.
 */

export function startEventStream(res: ServerResponse, headers: Readonly<Record<string, string>> = {}): void {
  res.writeHead(HTTP.ok, {
    ...headers,
    "Content-Type": "text/event-stream; charset=utf-8",
    // Proxies must neither cache nor buffer a token stream.
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
  });
  // Send the headers now: the client learns at once that the request was accepted, even while queued.
  res.flushHeaders();
}

export function sendEvent(res: ServerResponse, data: unknown): void {
  if (!res.writableEnded && !res.destroyed) res.write(`data: ${JSON.stringify(data)}\n\n`);
}

export function endEventStream(res: ServerResponse): void {
  if (res.writableEnded || res.destroyed) return;
  res.end("data: [DONE]\n\n");
}
