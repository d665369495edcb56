import { type ChildProcess, fork } from "node:child_process";
import { join } from "node:path";
import type { Answer, Job } from "./worker.js";

// Long-lived children that load mutants: Node's start-up (~50 ms) would otherwise cost more than
// loading a tiny model. A child that crashes, hangs or passes the memory limit is replaced.

export type PoolOutcome = Answer["outcome"] | "hang";
export interface PoolAnswer { readonly outcome: PoolOutcome; readonly message: string }

export interface PoolOptions {
  readonly workers: number;
  /** A mutant that takes longer than this to load and run counts as a hang. */
  readonly timeoutMs: number;
  /** JS heap limit of each child and the peak RSS past which a load counts as out-of-memory. */
  readonly memoryMb: number;
}

interface Slot {
  child: ChildProcess;
  busy: { job: Job; done: (a: PoolAnswer) => void; timer: NodeJS.Timeout } | null;
  stderr: string;
}

const WORKER = join(import.meta.dirname, "worker.js");
const STDERR_KEEP = 4096;

export class LoaderPool {
  private readonly slots: Slot[] = [];
  private readonly queue: Array<{ job: Job; done: (a: PoolAnswer) => void }> = [];
  restarts = 0;
  private closing = false;

  constructor(private readonly options: PoolOptions) {
    for (let i = 0; i < options.workers; i++) this.slots.push(this.spawn());
  }

  load(job: Job): Promise<PoolAnswer> {
    return new Promise((done) => {
      this.queue.push({ job, done });
      this.pump();
    });
  }

  close(): void {
    this.closing = true;
    for (const s of this.slots) s.child.kill("SIGKILL");
  }

  private spawn(): Slot {
    const slot: Slot = { child: this.fork(), busy: null, stderr: "" };
    this.attach(slot);
    return slot;
  }

  private fork(): ChildProcess {
    return fork(WORKER, [], {
      execArgv: [`--max-old-space-size=${this.options.memoryMb}`],
      stdio: ["ignore", "ignore", "pipe", "ipc"],
      serialization: "advanced",
    });
  }

  private replace(slot: Slot, kill = true): void {
    this.restarts++;
    if (kill) { slot.child.removeAllListeners("exit"); slot.child.kill("SIGKILL"); }
    slot.child = this.fork();
    slot.stderr = "";
    this.attach(slot);
  }

  private attach(slot: Slot): void {
    const child = slot.child;
    child.stderr?.on("data", (d: Buffer) => { slot.stderr = (slot.stderr + d.toString()).slice(-STDERR_KEEP); });
    child.on("message", (a: Answer) => {
      const b = slot.busy;
      if (!b || a.id !== b.job.id) return;
      clearTimeout(b.timer);
      slot.busy = null;
      if (a.maxRssMb > this.options.memoryMb) {
        b.done({ outcome: "oom", message: `peak RSS ${a.maxRssMb.toFixed(0)} MB > ${this.options.memoryMb} MB (${a.outcome}: ${a.message})` });
        this.replace(slot);
      } else {
        b.done({ outcome: a.outcome, message: a.message });
      }
      this.pump();
    });
    child.on("error", () => {}); // a send to a dying child: its exit is handled below
    child.on("exit", (code, signal) => {
      const b = slot.busy;
      if (!b) {
        if (!this.closing) this.replace(slot, false);
        return;
      }
      clearTimeout(b.timer);
      slot.busy = null;
      const oom = /heap out of memory|Allocation failed|ENOMEM/i.test(slot.stderr);
      b.done({ outcome: oom ? "oom" : "crash", message: `child exited (code ${code}, signal ${signal}): ${slot.stderr.trim().split("\n").slice(-3).join(" | ")}` });
      this.replace(slot, false);
      this.pump();
    });
  }

  private pump(): void {
    for (const slot of this.slots) {
      if (slot.busy || !this.queue.length) continue;
      const { job, done } = this.queue.shift()!;
      const timer = setTimeout(() => {
        if (slot.busy?.job.id !== job.id) return;
        slot.busy = null;
        done({ outcome: "hang", message: `no answer within ${this.options.timeoutMs} ms` });
        this.replace(slot);
        this.pump();
      }, this.options.timeoutMs);
      slot.busy = { job, done, timer };
      slot.child.send(job);
    }
  }
}
