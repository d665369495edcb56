#!/usr/bin/env node
import { setFlagsFromString } from "node:v8";

// Node 20 keeps WebAssembly relaxed SIMD (fused multiply-add) behind a flag, although V8 implements
// it; the kernels' relaxed build passes the same conformance suite as the plain one, so the CLI turns
// it on before any module is compiled (later Node versions have it on; the flag is then a no-op).
setFlagsFromString("--experimental-wasm-relaxed-simd");

const { runCli } = await import("./cli.js");
process.exitCode = await runCli(process.argv.slice(2));
