import { createReadStream, existsSync, statSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { basename, extname, join, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";
import { RwkvInputError } from "../../core/errors.js";
import { detectVersion } from "../../core/model/detect.js";
import { tokenizerKindForVocab } from "../../core/tokenizer/choose.js";
import type { TokenizerKind } from "../../core/tokenizer/types.js";
import { type CliIO, numberIn, parse, str, UsageError } from "../cli-util.js";
import { type CliConfig, modelPathFor } from "../model-arg.js";
import { loadCheckpoint } from "../load.js";
import { findTokenizerFile } from "../tokenizer.js";

/*
 * `rwkv web`: serves the browser page (dist/browser, built by `npm run build`) and the model file
 * it loads. Every response carries COOP/COEP, so the page is cross-origin isolated and its engine
 * Worker gets kernel threads; nothing comes from anywhere but this server.
 */

export const WEB_USAGE = `web [MODEL]                  the chat/completion page in a browser, the model running there (default: the bundled model)
      --host H (127.0.0.1)  --port N (8080, 0 = any free port)  --tokenizer PATH  --tokenizer-kind world|20b|bytes
      --backend webgpu|wasm|reference   the page's kernels (default: WebGPU where the browser has it, else wasm)`;

/** The backends a browser page can run (the page checks which it has). */
const PAGE_BACKENDS = ["webgpu", "wasm", "reference"];
const DEFAULT_HOST = "127.0.0.1";
const DEFAULT_PORT = 8080;
const MAX_PORT = 65535;

/** The built page: dist/browser beside this file's dist/src/node/commands/. */
export const BROWSER_DIR = fileURLToPath(new URL("../../../browser/", import.meta.url));

const PAGE_FILES = ["index.html", "app.js", "app.js.map", "rwkv.js", "rwkv.js.map", "style.css"];
const TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
  ".map": "application/json", ".json": "application/json", ".txt": "text/plain; charset=utf-8",
};

/** What makes a page cross-origin isolated (and so allowed to share memory with its workers). */
const ISOLATION_HEADERS = {
  "Cross-Origin-Opener-Policy": "same-origin",
  "Cross-Origin-Embedder-Policy": "require-corp",
  "Cross-Origin-Resource-Policy": "same-origin",
};

export interface WebServerOptions {
  /** The model the page loads at start; null: the user picks one. */
  readonly modelPath: string | null;
  /** Its tokenizer file, when its kind needs one. */
  readonly tokenizerPath?: string | null;
  readonly host?: string;
  readonly port?: number;
  /** Send COOP/COEP (default true); false serves a page that runs its kernels on one thread. */
  readonly isolated?: boolean;
  /** Extra folders served read-only under a URL prefix ("/golden/" -> a directory), e.g. for tests. */
  readonly mounts?: Readonly<Record<string, string>>;
  /** The page's files (default BROWSER_DIR). */
  readonly pageDir?: string;
  /** The backend the page asks for (default: the best its browser has; a page URL's ?backend= overrides). */
  readonly backend?: string;
}

export interface WebServer {
  readonly url: string;
  readonly server: Server;
  close(): Promise<void>;
}

function sendFile(req: IncomingMessage, res: ServerResponse, path: string, headers: Record<string, string>): void {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new Error("not a file");
    size = st.size;
  } catch {
    sendText(res, 404, "not found", headers);
    return;
  }
  res.writeHead(200, { ...headers, "Content-Type": TYPES[extname(path)] ?? "application/octet-stream", "Content-Length": String(size), "Cache-Control": "no-cache" });
  if (req.method === "HEAD") { res.end(); return; }
  createReadStream(path).on("error", () => res.destroy()).pipe(res);
}

function sendText(res: ServerResponse, status: number, text: string, headers: Record<string, string>): void {
  res.writeHead(status, { ...headers, "Content-Type": "text/plain; charset=utf-8" });
  res.end(text + "\n");
}

/** A file under `dir` for the URL tail `rest`, never outside it. */
function inside(dir: string, rest: string): string | null {
  let decoded: string;
  try { decoded = decodeURIComponent(rest); } catch { return null; }
  const full = resolve(dir, "." + sep + decoded);
  return full.startsWith(resolve(dir) + sep) ? full : null;
}

export async function startWebServer(options: WebServerOptions): Promise<WebServer> {
  const pageDir = options.pageDir ?? BROWSER_DIR;
  if (!existsSync(join(pageDir, "rwkv.js"))) throw new RwkvInputError(pageDir, "the browser build is missing (run npm run build)");
  const headers: Record<string, string> = { "X-Content-Type-Options": "nosniff", ...(options.isolated === false ? {} : ISOLATION_HEADERS) };
  const config = JSON.stringify({
    model: options.modelPath ? { url: "model", name: basename(options.modelPath) } : null,
    tokenizer: options.tokenizerPath ? { url: "tokenizer" } : null,
    ...(options.backend ? { backend: options.backend } : {}),
  });
  const server = createServer((req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") { sendText(res, 405, "method not allowed", { ...headers, Allow: "GET, HEAD" }); return; }
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const name = path === "/" ? "index.html" : path.slice(1);
    if (PAGE_FILES.includes(name)) return sendFile(req, res, join(pageDir, name), headers);
    if (name === "config.json") {
      res.writeHead(200, { ...headers, "Content-Type": TYPES[".json"], "Cache-Control": "no-cache" });
      res.end(req.method === "HEAD" ? undefined : config);
      return;
    }
    if (name === "model" && options.modelPath) return sendFile(req, res, options.modelPath, headers);
    if (name === "tokenizer" && options.tokenizerPath) return sendFile(req, res, options.tokenizerPath, headers);
    for (const [prefix, dir] of Object.entries(options.mounts ?? {})) {
      if (!path.startsWith(prefix)) continue;
      const file = inside(dir, path.slice(prefix.length));
      if (file) return sendFile(req, res, file, headers);
    }
    sendText(res, 404, "not found", headers);
  });
  await new Promise<void>((ok, fail) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      fail(e.code === "EADDRINUSE" ? new RwkvInputError(`port ${options.port}`, "is already in use (pick another with --port)") : e));
    server.listen(options.port ?? DEFAULT_PORT, options.host ?? DEFAULT_HOST, ok);
  });
  const a = server.address() as AddressInfo;
  const host = a.address.includes(":") ? `[${a.address}]` : a.address;
  return {
    url: `http://${host}:${a.port}/`, server,
    close: () => new Promise<void>((ok) => { server.closeAllConnections(); server.close(() => ok()); }),
  };
}

/** The tokenizer file the page needs for this model (null for byte-level models); read from the header only. */
function tokenizerForWeb(modelPath: string, kindOption: string | undefined, path: string | undefined): string | null {
  if (kindOption !== undefined && kindOption !== "world" && kindOption !== "20b" && kindOption !== "bytes") {
    throw new UsageError(`--tokenizer-kind must be world, 20b or bytes, got "${kindOption}"`);
  }
  const { checkpoint, close } = loadCheckpoint(modelPath);
  try {
    detectVersion(checkpoint); // a file that is no RWKV model fails here, with its name
    const emb = checkpoint.tensors.get("emb.weight");
    const kind: TokenizerKind = (kindOption as TokenizerKind | undefined) ?? tokenizerKindForVocab(emb?.shape[0] ?? 0);
    return findTokenizerFile(kind, { path, modelPath });
  } finally {
    close();
  }
}

export async function webCommand(args: string[], io: CliIO, config: CliConfig): Promise<number> {
  const { values, positionals } = parse(args, {
    host: { type: "string" }, port: { type: "string" }, tokenizer: { type: "string" }, "tokenizer-kind": { type: "string" }, backend: { type: "string" },
  }, ["[MODEL]"]);
  const port = numberIn(values, "port", DEFAULT_PORT, 0, MAX_PORT);
  if (!Number.isSafeInteger(port)) throw new UsageError(`--port must be an integer, got "${String(values.port)}"`);
  const modelPath = modelPathFor(positionals[0], config);
  const tokenizerPath = tokenizerForWeb(modelPath, str(values, "tokenizer-kind"), str(values, "tokenizer"));
  const backend = str(values, "backend");
  if (backend !== undefined && !PAGE_BACKENDS.includes(backend)) throw new UsageError(`--backend must be one of ${PAGE_BACKENDS.join(", ")}, got "${backend}"`);
  const web = await startWebServer({ modelPath, tokenizerPath, host: str(values, "host") ?? DEFAULT_HOST, port, backend });
  io.stderr(`rwkv web: open ${web.url} (model ${basename(modelPath)}; Ctrl-C stops)\n`);
  await new Promise<void>((done) => {
    const stop = () => { process.off("SIGINT", stop); process.off("SIGTERM", stop); void web.close().then(done); };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  return 0;
}
