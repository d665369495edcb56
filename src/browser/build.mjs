// Builds the browser files into dist/browser (part of `npm run build`, after the wasm step):
//   rwkv.js     the library as one ES module (core + src/browser), the kernels' wasm embedded as
//               base64 by the wasm step; it is also the script of its own engine and kernel Workers
//   app.js      the page of `rwkv web`, importing ./rwkv.js at run time (not a second copy)
//   index.html, style.css
// Type-checks src/browser with the DOM library first (the main tsconfig has no DOM types).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const out = join(root, "dist", "browser");
const app = join(root, "src", "browser", "app");

execFileSync(process.execPath, [join(root, "node_modules", "typescript", "bin", "tsc"), "-p", join(root, "tsconfig.browser.json")], { stdio: "inherit" });

const common = { bundle: true, format: "esm", platform: "browser", target: "es2022", sourcemap: true, legalComments: "none", logLevel: "warning" };

await build({ ...common, entryPoints: [join(root, "src", "browser", "index.ts")], outfile: join(out, "rwkv.js") });

/** The page imports the library as "../index.js" (for types); at run time it is the sibling rwkv.js. */
const libraryAsSibling = {
  name: "library-as-sibling",
  setup(b) {
    b.onResolve({ filter: /^\.\.\/index\.js$/ }, () => ({ path: "./rwkv.js", external: true }));
  },
};
await build({ ...common, entryPoints: [join(app, "app.ts")], outfile: join(out, "app.js"), plugins: [libraryAsSibling] });

mkdirSync(out, { recursive: true });
for (const f of ["index.html", "style.css"]) copyFileSync(join(app, f), join(out, f));
