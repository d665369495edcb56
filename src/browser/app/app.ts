/*
 * The page `rwkv web` serves. All model work happens in the engine Worker (RwkvEngine); this file
 * only wires the controls to it. "../index.js" is rewritten to "./rwkv.js" by the build, so the
 * page loads the library once, from the same file its workers run.
 */
import { type EngineInfo, type EngineLoad, type RwkvEngine, startEngine } from "../index.js";
import { loadFromBrowser, saveInBrowser, storageName } from "./storage.js";
import { parseTranscript } from "./transcript.js";

/** What `rwkv web` says about the model it serves (GET config.json). */
interface PageConfig {
  readonly model?: { readonly url: string; readonly name: string } | null;
  readonly tokenizer?: { readonly url: string } | null;
  /** `rwkv web --backend`; the page's own ?backend= wins. */
  readonly backend?: string;
}

const MS_PER_S = 1000;
const STATE_FILE_NAME = "conversation.rwkvstate";

const el = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const e = document.getElementById(id);
  if (!e) throw new Error(`page is missing #${id}`);
  return e as T;
};

const transcript = el("transcript");
const prompt = el<HTMLTextAreaElement>("prompt");
const errorBox = el("error");
const stats = el("stats");
const info = el("model-info");
const stateInfo = el("state-info");
const controls = ["send", "reset", "apply-settings", "save-file", "load-file-button", "save-browser", "load-browser"].map((id) => el<HTMLButtonElement>(id));
const stopButton = el<HTMLButtonElement>("stop");

let engine: RwkvEngine = startEngine({ workerUrl: new URL("rwkv.js", location.href) });
let model: EngineInfo | null = null;
let busy = false;

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function showError(e: unknown): void {
  errorBox.textContent = message(e);
}

function setBusy(b: boolean): void {
  busy = b;
  const usable = model !== null && !b;
  for (const c of controls) c.disabled = !usable;
  prompt.disabled = !usable;
  stopButton.disabled = !b;
  document.body.setAttribute("aria-busy", String(b));
}

/** Runs one action with the controls locked; its error goes to the alert line. */
async function act(work: () => Promise<void>): Promise<void> {
  if (busy) return;
  errorBox.textContent = "";
  setBusy(true);
  try {
    await work();
  } catch (e) {
    showError(e);
  } finally {
    setBusy(false);
  }
}

function describe(m: EngineInfo): string {
  const c = m.config;
  return `${m.name}: RWKV-${c.version}, ${c.nLayer} layers × ${c.nEmbd}, vocabulary ${c.vocabSize} (${m.tokenizer ?? "no"} tokenizer) · ` +
    (m.adapter ? `${m.backend} backend (GPU: ${m.adapter}) · ` : `${m.backend} backend, ${m.threads} thread${m.threads === 1 ? "" : "s"}${m.crossOriginIsolated ? "" : " (page not cross-origin isolated)"} · `) +
    (m.backendNote ? `${m.backendNote} · ` : "") +
    `loaded in ${Math.round(m.loadMs)} ms`;
}

function isCompletion(): boolean {
  return el<HTMLInputElement>("mode-completion").checked;
}

function bubble(role: "user" | "assistant" | "text" | "system", text: string): HTMLElement {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  if (role !== "text") {
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = role === "user" ? "You" : role === "assistant" ? "RWKV" : "System";
    div.append(who);
  }
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  div.append(body);
  transcript.append(div);
  transcript.scrollTop = transcript.scrollHeight;
  return body;
}

/** Redraws the transcript from the engine's history (the text the model's state has seen). */
function render(history: string): void {
  transcript.replaceChildren();
  for (const seg of parseTranscript(history)) bubble(seg.role, seg.text);
  transcript.dataset.history = history;
}

async function loadModel(req: EngineLoad): Promise<void> {
  info.textContent = `Loading ${req.name ?? "model"}…`;
  try {
    model = await engine.load(req);
  } finally {
    info.textContent = model ? describe(model) : "No model loaded: pick one under Model.";
  }
  render("");
  stats.textContent = "";
}

async function send(): Promise<void> {
  const text = prompt.value;
  const raw = isCompletion();
  if (!raw && text.trim() === "") return;
  await act(async () => {
    let target: HTMLElement;
    if (raw) {
      const last = transcript.lastElementChild?.classList.contains("text") ? transcript.lastElementChild.querySelector<HTMLElement>(".body") : null;
      target = last ?? bubble("text", "");
      target.textContent += text;
    } else {
      bubble("user", text.trim());
      target = bubble("assistant", "");
    }
    prompt.value = "";
    let n = 0;
    const t0 = performance.now();
    const r = await engine.send(text, {
      raw,
      onText: (t) => {
        target.textContent += t;
        n++;
        transcript.scrollTop = transcript.scrollHeight;
        stats.textContent = `generating… ${n} pieces in ${((performance.now() - t0) / MS_PER_S).toFixed(1)} s`;
      },
    });
    render(r.history);
    const rate = r.tokensPerSecond === null ? "" : ` · ${r.tokensPerSecond.toFixed(1)} tokens/s`;
    stats.textContent = `${r.tokens} tokens${rate} · ${r.finishReason === "cancelled" ? "stopped" : r.finishReason === "length" ? "reached max tokens" : "done"}`;
  });
  prompt.focus();
}

function settingsAssignments(): string[] {
  const form = el<HTMLFormElement>("settings");
  return [...new FormData(form).entries()].map(([k, v]) => `${k}=${String(v)}`);
}

async function fileBytes(input: HTMLInputElement): Promise<{ bytes: Uint8Array; name: string } | null> {
  const f = input.files?.[0];
  if (!f) return null;
  return { bytes: new Uint8Array(await f.arrayBuffer()), name: f.name };
}

function download(bytes: Uint8Array, name: string): void {
  const url = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>], { type: "application/octet-stream" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), MS_PER_S);
}

function wire(): void {
  el<HTMLFormElement>("prompt-form").addEventListener("submit", (e) => { e.preventDefault(); void send(); });
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); void send(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && busy) void engine.stop(); });
  stopButton.addEventListener("click", () => { void engine.stop(); });
  el("reset").addEventListener("click", () => void act(async () => { render(await engine.reset()); stats.textContent = ""; }));
  el<HTMLFormElement>("settings").addEventListener("submit", (e) => {
    e.preventDefault();
    void act(async () => { await engine.set(settingsAssignments()); stats.textContent = "Settings applied."; });
  });
  el("save-file").addEventListener("click", () => void act(async () => {
    download(await engine.save(), STATE_FILE_NAME);
    stateInfo.textContent = `Saved as ${STATE_FILE_NAME}.`;
  }));
  const loadFile = el<HTMLInputElement>("load-file");
  el("load-file-button").addEventListener("click", () => loadFile.click());
  loadFile.addEventListener("change", () => void act(async () => {
    const f = await fileBytes(loadFile);
    loadFile.value = "";
    if (!f) return;
    render(await engine.restore(f.bytes, f.name));
    stateInfo.textContent = `Restored ${f.name}.`;
  }));
  el("save-browser").addEventListener("click", () => void act(async () => {
    await saveInBrowser(await engine.save());
    stateInfo.textContent = `Saved in ${storageName()}.`;
  }));
  el("load-browser").addEventListener("click", () => void act(async () => {
    const bytes = await loadFromBrowser();
    if (!bytes) { stateInfo.textContent = "Nothing saved in this browser yet."; return; }
    render(await engine.restore(bytes, "the browser's saved conversation"));
    stateInfo.textContent = `Restored from ${storageName()}.`;
  }));
  const modelFile = el<HTMLInputElement>("model-file");
  const tokenizerFile = el<HTMLInputElement>("tokenizer-file");
  // The File itself goes to the Worker, which reads it in slices: a multi-GB file is never copied whole.
  modelFile.addEventListener("change", () => void act(async () => {
    const f = modelFile.files?.[0];
    if (!f) return;
    await loadModel({ source: f, name: f.name, tokenizer: tokenizerFile.files?.[0] ?? null });
  }));
  el("load-url").addEventListener("click", () => void act(async () => {
    const url = el<HTMLInputElement>("model-url").value.trim();
    if (url === "") throw new Error("model URL: enter an address first");
    const tok = tokenizerFile.files?.[0] ?? null;
    await loadModel({ source: new URL(url, location.href).href, name: url, tokenizer: tok });
  }));
}

/** The backend asked for: the page URL's ?backend=, else the server's, else the engine's choice (WebGPU where there is one). */
function pageBackend(config: PageConfig): string | undefined {
  return new URLSearchParams(location.search).get("backend") ?? config.backend;
}

async function start(): Promise<EngineInfo | null> {
  wire();
  let config: PageConfig = {};
  try {
    const r = await fetch("config.json");
    if (r.ok) config = (await r.json()) as PageConfig;
  } catch {
    // Served as plain files (no `rwkv web`): the user picks a model.
  }
  if (!config.model) {
    info.textContent = "No model loaded: pick one under Model.";
    setBusy(false);
    return null;
  }
  const m = config.model;
  await act(() => loadModel({
    source: new URL(m.url, location.href).href, name: m.name, backend: pageBackend(config),
    tokenizer: config.tokenizer ? new URL(config.tokenizer.url, location.href).href : null,
  }));
  return model;
}

/** For scripts and tests: the engine and the first load's outcome. */
const ready = start();
Object.assign(window, {
  rwkvPage: {
    ready,
    get engine() { return engine; },
    restartEngine() { engine.terminate(); engine = startEngine({ workerUrl: new URL("rwkv.js", location.href) }); model = null; setBusy(false); },
  },
});
