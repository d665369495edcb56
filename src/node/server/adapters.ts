import type { ForwardOptions, Model } from "../../core/model/model.js";
import type { State } from "../../core/model/state.js";
import { RwkvInputError } from "../../core/errors.js";
import type { Scheduler } from "./scheduler.js";

/*
 * Adapters served next to the base model: a request names `"<base>+<adapter>"` in `model` and runs
 * on that adapter's weights. Two ways (adapter-loading.ts picks):
 *   - kept unmerged (UNMERGED; LoRA/PiSSA, state tuning): the adapter's factors live in the base model
 *     (Model.loadAdapter) and its requests go to the base's scheduler with JobSpec.adapter set, so
 *     they share its slots and batches with the base and the other adapters; the scheduler keeps a
 *     prefix cache per adapter. Memory: one base model plus the small factors.
 *   - merged (DiSHA, full tensors other than ln1/ln2/ln_out): a model of its own, the
 *     base with the adapter merged at load, with its own scheduler and cache.
 */

/** The separator between the base model's id and an adapter's name in a request's `model`. */
export const ADAPTER_SEPARATOR = "+";
const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;

/** An adapter loaded unmerged into the served base model (Model.loadAdapter) under its name. */
export const UNMERGED = "unmerged";
/** What serves an adapter: the base with it merged, or the base itself (UNMERGED). */
export type ServedAdapter = Model | typeof UNMERGED;

export interface ServedModel {
  /** The id clients send. */
  readonly id: string;
  /** For embeddings and limits: a merged model, or the base whose states start with the adapter. */
  readonly model: Model;
  readonly scheduler: Scheduler;
  /** The unmerged adapter its requests name (JobSpec.adapter); absent for a merged one. */
  readonly adapter?: string;
}

export class AdapterRoutes {
  private readonly byId = new Map<string, ServedModel>();

  constructor(baseName: string, adapters: ReadonlyMap<string, ServedAdapter>, base: { model: Model; scheduler: Scheduler }, schedulerFor: (m: Model) => Scheduler) {
    for (const [name, served] of adapters) {
      const id = `${baseName}${ADAPTER_SEPARATOR}${name}`;
      this.byId.set(id, served === UNMERGED
        ? { id, model: withAdapter(base.model, name), scheduler: base.scheduler, adapter: name }
        : { id, model: served, scheduler: schedulerFor(served) });
    }
  }

  get(id: string): ServedModel | undefined {
    return this.byId.get(id);
  }

  all(): ServedModel[] {
    return [...this.byId.values()];
  }

  /** The routes with a scheduler of their own (merged adapters). */
  ownSchedulers(): Scheduler[] {
    return this.all().filter((a) => a.adapter === undefined).map((a) => a.scheduler);
  }
}

/** `base` whose initState() starts states with `adapter` (kept unmerged in it): the same model, no copy. */
export function withAdapter(base: Model, adapter: string): Model {
  const hidden = base.hidden;
  return {
    config: base.config, backend: base.backend, fingerprint: base.fingerprint,
    initState: () => base.initState(adapter),
    useTimeState: (c) => base.useTimeState(c),
    step: (t, s) => base.step(t, s),
    forward: (t, s, o) => base.forward(t, s, o),
    stepBatch: (t, s) => base.stepBatch(t, s),
    ...(hidden ? { hidden: (t: readonly number[], s: State, o?: ForwardOptions) => hidden.call(base, t, s, o) } : {}),
  };
}

/** `NAME=PATH` of `rwkv serve --adapter` (or `flag`, whose value after "=" is `what`). */
export function parseAdapterFlag(text: string, flag = "--adapter", what = "PATH"): { name: string; path: string } {
  const i = text.indexOf("=");
  if (i < 0) throw new RwkvInputError(flag, `expected NAME=${what}, got "${text}"`);
  const name = text.slice(0, i), path = text.slice(i + 1);
  if (!NAME_PATTERN.test(name)) throw new RwkvInputError(flag, `name "${name}" must be 1-64 letters, digits, "_", "." or "-"`);
  if (path === "") throw new RwkvInputError(flag, `no ${what} after "${name}="`);
  return { name, path };
}
