/*
 * The training run's random numbers: xoshiro128** seeded through splitmix32, with a state of four
 * 32-bit words that a checkpoint stores, so a resumed run draws exactly the numbers an
 * uninterrupted run would have drawn.
 */

const TWO_POW_32 = 2 ** 32;
/** Uniforms are built from 53 random bits: two draws of 32 and 21 bits. */
const TWO_POW_21 = 2 ** 21;
const TWO_POW_53 = 2 ** 53;

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

export type RngState = [number, number, number, number];

export class TrainRng {
  private s: Uint32Array = new Uint32Array(4);

  constructor(seed: number) {
    // splitmix32 expands the seed into four well-mixed words (never all zero in practice).
    let x = (seed >>> 0) ^ Math.floor(seed / TWO_POW_32);
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if ((this.s[0] | this.s[1] | this.s[2] | this.s[3]) === 0) this.s[0] = 1;
  }

  static fromState(state: readonly number[]): TrainRng {
    const r = new TrainRng(0);
    r.setState(state);
    return r;
  }

  state(): RngState {
    return [this.s[0], this.s[1], this.s[2], this.s[3]];
  }

  setState(state: readonly number[]): void {
    if (state.length !== 4 || !state.every((w) => Number.isInteger(w) && w >= 0 && w < TWO_POW_32)) throw new Error("bad RNG state");
    this.s.set(state);
  }

  /** Next unsigned 32-bit integer (xoshiro128**). */
  uint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  uniform(): number {
    const hi = this.uint32(), lo = this.uint32() >>> 11;
    return (hi * TWO_POW_21 + lo) / TWO_POW_53;
  }

  /** Uniform integer in [0, n), unbiased (rejection of the short last range). */
  int(n: number): number {
    if (!(n >= 1 && n <= TWO_POW_32)) throw new RangeError(`int(${n})`);
    const limit = TWO_POW_32 - (TWO_POW_32 % n);
    for (;;) {
      const x = this.uint32();
      if (x < limit) return x % n;
    }
  }

  /** Standard normal (Box-Muller; one value per call so the state alone describes the stream). */
  normal(): number {
    const u1 = 1 - this.uniform(); // (0, 1]: log is finite
    const u2 = this.uniform();
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }
}
