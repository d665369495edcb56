// Lint is part of `npm test`. The one project-specific rule: the core must run in browsers,
// so nothing under src/core may import Node built-ins.
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
    files: ["src/core/**/*.ts"],
    rules: {
      "no-restricted-imports": ["error", {
        patterns: [{ group: ["node:*", "fs", "path", "os", "worker_threads", "child_process", "url", "crypto"],
          message: "src/core runs in browsers too: keep Node built-ins in src/node." }],
      }],
    },
  },
);
