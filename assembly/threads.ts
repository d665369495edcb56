/*
 * The threading protocol both WebAssembly modules (assembly/kernels.ts, assembly/train.ts) run over
 * their shared memory. Each module exports workerLoop/dispatch/stopWorkers as thin wrappers passing
 * its own runJob; the JS side (src/core/backend/wasm.ts, src/core/backend/wasm-train.ts) fills the
 * control block's argument slots before a dispatch.
 */

/** Runs `part` of `nparts` of job `job`, whose arguments are in the control block at ctrl. */
export type JobRunner = (ctrl: usize, job: i32, part: i32, nparts: i32) => void;

// Control block layout (bytes from ctrl), shared by the main thread and the workers.
const C_EPOCH: usize = 0; // bumped once per job; idle workers wait on it
const C_DONE: usize = 4; // chunks of the current job finished; the main thread waits on it
const C_TICKET: usize = 8; // i64: epoch << 32 | nchunks << 16 | next unclaimed chunk
const C_JOB: usize = 16;
const C_SLEEPERS: usize = 20; // workers inside atomic.wait (notify only when someone sleeps)
const C_EXIT: usize = 24;
export const C_ARGS: usize = 32; // i32/f32 argument slots

// Threading. The main thread publishes a job as a ticket of `nchunks` chunks and claims chunks
// itself; workers spin briefly on the epoch, then sleep in atomic.wait, and claim chunks while any
// are left. Dynamic claiming means a worker that is descheduled (another process wants the core)
// costs nothing: the main thread simply runs the remaining chunks. A chunk is claimed by a CAS on
// the ticket, which also checks the epoch, so a late worker can never run a finished job's chunk;
// the main thread returns only when every chunk is done, so a job's arguments stay stable while
// any chunk of it runs.

/** Claims and runs chunks of epoch `e` until none is left. */
function claimChunks(ctrl: usize, e: i32, runJob: JobRunner): void {
  while (true) {
    const w = atomic.load<i64>(ctrl, C_TICKET);
    if (<i32>(w >>> 32) != e) return;
    const next = <i32>(w & 0xffff), n = <i32>((w >>> 16) & 0xffff);
    if (next >= n) return;
    if (atomic.cmpxchg<i64>(ctrl, w, w + 1, C_TICKET) != w) continue;
    runJob(ctrl, load<i32>(ctrl, C_JOB), next, n);
    if (atomic.add<i32>(ctrl, 1, C_DONE) + 1 == n) atomic.notify(ctrl + C_DONE, 1);
  }
}

/** A worker's whole life: wait for a job, claim its chunks, until told to exit. */
export function runWorker(ctrl: usize, spin: i32, runJob: JobRunner): void {
  let seen: i32 = 0;
  while (true) {
    let e = atomic.load<i32>(ctrl, C_EPOCH);
    for (let k = 0; e == seen && k < spin; k++) e = atomic.load<i32>(ctrl, C_EPOCH);
    while (e == seen) {
      atomic.add<i32>(ctrl, 1, C_SLEEPERS);
      atomic.wait<i32>(ctrl + C_EPOCH, seen, -1);
      atomic.sub<i32>(ctrl, 1, C_SLEEPERS);
      e = atomic.load<i32>(ctrl, C_EPOCH);
    }
    if (atomic.load<i32>(ctrl, C_EXIT) != 0) return;
    seen = e;
    claimChunks(ctrl, e, runJob);
  }
}

/** Main thread: run `job` (arguments already stored) as `nchunks` chunks with whichever workers are awake. */
export function dispatchJob(ctrl: usize, job: i32, nchunks: i32, spin: i32, runJob: JobRunner): void {
  store<i32>(ctrl, job, C_JOB);
  atomic.store<i32>(ctrl, 0, C_DONE);
  const e = atomic.load<i32>(ctrl, C_EPOCH) + 1;
  atomic.store<i64>(ctrl, (<i64>e << 32) | (<i64>nchunks << 16), C_TICKET); // seq-cst: publishes the job
  atomic.store<i32>(ctrl, e, C_EPOCH);
  if (atomic.load<i32>(ctrl, C_SLEEPERS) > 0) atomic.notify(ctrl + C_EPOCH, -1);
  claimChunks(ctrl, e, runJob);
  let d = atomic.load<i32>(ctrl, C_DONE);
  for (let k = 0; d != nchunks && k < spin; k++) d = atomic.load<i32>(ctrl, C_DONE);
  while (d != nchunks) {
    atomic.wait<i32>(ctrl + C_DONE, d, -1);
    d = atomic.load<i32>(ctrl, C_DONE);
  }
}

/** Tells the workers to return from workerLoop. */
export function stopAll(ctrl: usize): void {
  atomic.store<i32>(ctrl, 1, C_EXIT);
  atomic.add<i32>(ctrl, 1, C_EPOCH);
  atomic.notify(ctrl + C_EPOCH, -1);
}


/* @inline */ export function arg(a: usize, i: i32): i32 {
  return load<i32>(a + (<usize>i << 2));
}

/** [lo, hi) of `n` items for `part` of `nparts`, chunk starts aligned to `align` items. */
/* @inline */ export function splitLo(n: i32, part: i32, nparts: i32, align: i32): i32 {
  const chunk = ((n + nparts * align - 1) / (nparts * align)) * align;
  return min(n, part * chunk);
}
/* @inline */ export function splitHi(n: i32, part: i32, nparts: i32, align: i32): i32 {
  const chunk = ((n + nparts * align - 1) / (nparts * align)) * align;
  return min(n, (part + 1) * chunk);
}
