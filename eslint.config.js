// Lint is part of `npm test`. Project-specific rules: the core must run in browsers, so nothing
// under src/core may import Node built-ins; and no promise may be left floating (type-aware).
import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/**", "node_modules/**"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_" }],
    },
  },
  {
    // Type-aware: a model call (Model.forward/step/stepBatch/hidden, loadModel) returns a Promise,
    // and one not awaited runs later or never reports its error. assembly/ is AssemblyScript (no
    // TypeScript project), so it is left out.
    files: ["src/**/*.ts", "test/**/*.ts", "bench/**/*.ts"],
    languageOptions: {
      parserOptions: { project: ["./tsconfig.json", "./tsconfig.browser.json"], tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // node:test's test()/describe() return promises the runner itself awaits.
      "@typescript-eslint/no-floating-promises": ["error", {
        allowForKnownSafeCalls: [{ from: "package", package: "node:test", name: ["test", "it", "describe", "suite", "before", "after", "beforeEach", "afterEach"] }],
      }],
      // A Promise where a value is tested or spread (`if (load())`) is a forgotten await too;
      // async callbacks given to event emitters and test runners are fine.
      "@typescript-eslint/no-misused-promises": ["error", { checksVoidReturn: false }],
      // The converse slip: `await` on a value that is not a promise (a synchronous call mistaken for a model call).
      "@typescript-eslint/await-thenable": "error",
    },
  },
  {
    files: ["src/core/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        patterns: [{ group: ["node:*", "fs", "path", "os", "worker_threads", "child_process", "url", "crypto"],
          message: "src/core runs in browsers too: keep Node built-ins in src/node." }],
      }],
    },
  },
);
