import type { Arena, Tensor } from "./backend.js";

/** A tensor whose shape an arena sets on every request (its storage may be larger). */
export interface SlotTensor extends Tensor {
  rows: number;
  cols: number;
}

/**
 * The Arena contract (backend.ts) once for every backend: slots served in request order and
 * reused after rewind, a slot grown only when a request needs more elements than it holds. A
 * backend says only how to make a slot's storage, whether a slot holds n elements, and how to
 * free one.
 */
export abstract class SlotArena<T extends SlotTensor> implements Arena {
  private readonly slots: T[] = [];
  private next = 0;
  allocations = 0;

  /** New storage for a (rows, cols) slot. */
  protected abstract make(rows: number, cols: number): T;
  /** Whether slot `t` holds n elements. */
  protected abstract holds(t: T, n: number): boolean;
  /** Frees a slot being replaced by a larger one (nothing for garbage-collected storage). */
  protected drop(_t: T): void {}

  take(rows: number, cols: number): Tensor {
    let t = this.slots[this.next];
    if (!t || !this.holds(t, rows * cols)) {
      if (t) this.drop(t);
      t = this.make(rows, cols); // (rows, cols)
      this.slots[this.next] = t;
      this.allocations++;
    }
    t.rows = rows;
    t.cols = cols;
    this.next++;
    return t;
  }
  mark(): number { return this.next; }
  rewind(mark: number): void { this.next = mark; }
  dispose(): void { this.slots.length = 0; this.next = 0; }
}
