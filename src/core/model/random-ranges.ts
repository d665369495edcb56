/*
 * Value ranges of random models (random.ts), shared by the version modules' randomRange. Values are
 * plausible rather than trained: a Linear weight with `fanIn` inputs has std LINEAR_GAIN/√fanIn,
 * so activations stay O(1) through the layers.
 */

/** std s ⇔ uniform on ±s√3. */
const SQRT3 = Math.sqrt(3);
/** Output std of a Linear layer for unit-std inputs. */
const LINEAR_GAIN = 0.5;

/** The range of a weight used as x·Wᵀ (or x·W) with `fanIn` inputs. */
export function linearRange(fanIn: number): readonly [number, number] {
  const h = (SQRT3 * LINEAR_GAIN) / Math.sqrt(fanIn);
  return [-h, h];
}

/** log(-log decay) range: decays e^{-e^w} from 0.998 (w = -6) to 0.55 (w = -0.5), as trained models span. */
export const LOG_DECAY = [-6, -0.5] as const;

/**
 * The headed WKV's per-head parameters (time_decay, time_faaaa): decays as trained ones span,
 * bonuses near 0. Any other name is an error of the version `what`'s randomRange.
 */
export function headedWkvRange(name: string, what: string): readonly [number, number] {
  if (name.endsWith(".time_decay")) return LOG_DECAY;
  if (name.endsWith(".time_faaaa")) return [-0.5, 0.5];
  throw new Error(`${what} random model: no value range for ${name}`);
}
