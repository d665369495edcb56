import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { TestContext } from "node:test";
import { type BrowserContext, chromium, type Page } from "playwright-core";

/*
 * A real headless Chromium for tests, driven by playwright-core (which downloads nothing): Debian's
 * `chromium` package (.ci/run installs it), a fresh profile per launch, and no network of its own
 * (no QUIC, no background or component updates, no sync), so tests talk only to local servers.
 * Missing browser: the test skips with a message outside CI and fails under CI=true, like the
 * ../shared fixtures (shared.ts), so a green CI run never hides a browser test that did not run.
 */

export const CHROMIUM_PATH = "/usr/bin/chromium";

const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/** How long a launch may take on a busy 2-core machine. */
const LAUNCH_TIMEOUT_MS = 60_000;

export interface BrowserSession {
  readonly context: BrowserContext;
  /** A new tab. */
  page(): Promise<Page>;
  /** Closes the browser and deletes its profile. */
  close(): Promise<void>;
}

/** Launches Chromium with a fresh user-data-dir, or skips (fails under CI) when it is not installed. */
export async function launchBrowser(t: TestContext): Promise<BrowserSession | null> {
  if (!existsSync(CHROMIUM_PATH)) {
    if (process.env.CI === "true") throw new Error(`${CHROMIUM_PATH} not found (.ci/run installs the Debian chromium package)`);
    t.skip(`${CHROMIUM_PATH} not found: apt-get install -y chromium`);
    return null;
  }
  const profile = mkdtempSync(join(tmpdir(), "rwkv-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM_PATH, headless: true, args: CHROMIUM_ARGS, timeout: LAUNCH_TIMEOUT_MS,
  });
  return {
    context,
    page: () => context.newPage(),
    close: async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
