import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { type BrowserContext, chromium, type Page } from "playwright-core";

/**
 * Debian's Chromium driven by playwright-core, for the browser tests. CI installs it (.ci/run);
 * elsewhere a missing browser skips the test with a message, and fails it under CI=true.
 * The flags keep it off the network: without the background-networking ones it keeps trying to
 * reach Google services, which in a closed network floods it with failed connections.
 */
export const CHROMIUM_PATH = process.env.RWKV_CHROMIUM ?? "/usr/bin/chromium";

export const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync",
];

/** How long a launch may take on a busy 2-core machine. */
const LAUNCH_TIMEOUT_MS = 60_000;

export interface Chromium {
  readonly context: BrowserContext;
  /** A new tab that records console errors and uncaught page errors in `errors`. */
  page(): Promise<{ page: Page; errors: string[] }>;
  close(): Promise<void>;
}

/**
 * Starts Chromium with a fresh profile, or skips `t` (fails under CI) when it is not installed.
 * `extraArgs` go after CHROMIUM_ARGS (e.g. the flags that turn WebGPU on).
 */
export async function launchChromium(t: TestContext, extraArgs: readonly string[] = []): Promise<Chromium | null> {
  if (!existsSync(CHROMIUM_PATH)) {
    if (process.env.CI === "true") throw new Error(`Chromium not found at ${CHROMIUM_PATH} (install Debian's chromium)`);
    t.skip(`Chromium not found at ${CHROMIUM_PATH}`);
    return null;
  }
  const profile = mkdtempSync(join(tmpdir(), "rwkv-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM_PATH, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs], acceptDownloads: true, timeout: LAUNCH_TIMEOUT_MS,
  });
  return {
    context,
    async page() {
      const page = await context.newPage();
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
      page.on("console", (m) => { if (m.type() === "error") errors.push(`console: ${m.text()}`); });
      return { page, errors };
    },
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
