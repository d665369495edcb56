import { setFlagsFromString } from "node:v8";

/*
 * Imported first by tests that compare runs in this process with `rwkv` child processes: bin.ts
 * turns relaxed SIMD on (Node 20 keeps it behind a flag), so the kernels here must be the same
 * build to round the same way. Must run before any WebAssembly module is validated.
 */
setFlagsFromString("--experimental-wasm-relaxed-simd");
