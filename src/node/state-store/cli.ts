import type { Model } from "../../core/model/model.js";
import { type CliIO, numberIn, type Options, str, UsageError, type Values } from "../cli-util.js";
import { storeModelId } from "./keys.js";
import { parseStateStoreUrl, RedisStateStore, STATE_STORE_DEFAULTS as D } from "./redis.js";

/* The `rwkv serve` flags of the shared state store (kept here so serve.ts only calls in). */

export const STATE_STORE_OPTIONS: Options = {
  "state-store": { type: "string" }, "state-ttl": { type: "string" }, "state-store-timeout": { type: "string" },
};

export const STATE_STORE_USAGE =
  `      --state-store redis://HOST:PORT[/DB]  share prefix states between replicas (Redis; local cache first)
      --state-ttl S (${D.ttlSeconds}) expiry of shared states  --state-store-timeout MS (${D.timeoutMs}) slower = recompute`;

const MAX_TTL_S = 365 * 24 * 3600;
const MAX_TIMEOUT_MS = 60_000;

/** The store the flags ask for, connected (or retrying in the background), or null without --state-store. `loadOptions`: what changes the numbers (threads do not). */
export async function stateStoreFromFlags(values: Values, model: Model, loadOptions: unknown, cacheBytes: number, io: CliIO): Promise<RedisStateStore | null> {
  const text = str(values, "state-store");
  if (text === undefined) {
    for (const f of ["state-ttl", "state-store-timeout"]) if (values[f] !== undefined) throw new UsageError(`--${f} needs --state-store URL`);
    return null;
  }
  let url: string;
  try { url = parseStateStoreUrl(text); } catch (e) { throw new UsageError(`--state-store: ${(e as Error).message}`); }
  if (cacheBytes <= 0) throw new UsageError("--state-store needs the local prefix cache (--cache-mb > 0): it is the first level");
  const ttl = numberIn(values, "state-ttl", D.ttlSeconds, 1, MAX_TTL_S);
  if (!Number.isSafeInteger(ttl)) throw new UsageError(`--state-ttl must be a whole number of seconds, got "${String(values["state-ttl"])}"`);
  const timeoutMs = numberIn(values, "state-store-timeout", D.timeoutMs, 1, MAX_TIMEOUT_MS);
  const store = new RedisStateStore({
    url, model, modelId: storeModelId(model, loadOptions), ttlSeconds: ttl, timeoutMs,
    log: (line) => io.stderr(`rwkv serve: ${line}\n`),
  });
  if (await store.connect()) io.stderr(`rwkv serve: sharing prefix states through ${text.replace(/\/\/[^@/]*@/, "//***@")} (TTL ${ttl} s)\n`);
  return store;
}
