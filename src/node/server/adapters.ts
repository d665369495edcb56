import type { Model } from "../../core/model/model.js";
import { RwkvInputError } from "../../core/errors.js";
import type { Scheduler } from "./scheduler.js";

/*
 * Adapters served next to the base model: a request names `"<base>+<adapter>"` in `model` and runs
 * on that adapter's weights. Each adapter is a model of its own (base with the adapter merged at
 * load) with its own scheduler, so its batches never mix weights and its prefix cache holds only
 * states computed with its weights (the cache is keyed by adapter by construction).
 */

/** The separator between the base model's id and an adapter's name in a request's `model`. */
export const ADAPTER_SEPARATOR = "+";
const NAME_PATTERN = /^[A-Za-z0-9_.-]{1,64}$/;

export interface ServedModel {
  /** The id clients send. */
  readonly id: string;
  readonly model: Model;
  readonly scheduler: Scheduler;
}

export class AdapterRoutes {
  private readonly byId = new Map<string, ServedModel>();

  constructor(baseName: string, adapters: ReadonlyMap<string, Model>, schedulerFor: (m: Model) => Scheduler) {
    for (const [name, model] of adapters) {
      const id = `${baseName}${ADAPTER_SEPARATOR}${name}`;
      this.byId.set(id, { id, model, scheduler: schedulerFor(model) });
    }
  }

  get(id: string): ServedModel | undefined {
    return this.byId.get(id);
  }

  all(): ServedModel[] {
    return [...this.byId.values()];
  }
}

/** `NAME=PATH` of `rwkv serve --adapter`. */
export function parseAdapterFlag(text: string): { name: string; path: string } {
  const i = text.indexOf("=");
  if (i < 0) throw new RwkvInputError("--adapter", `expected NAME=PATH, got "${text}"`);
  const name = text.slice(0, i), path = text.slice(i + 1);
  if (!NAME_PATTERN.test(name)) throw new RwkvInputError("--adapter", `name "${name}" must be 1-64 letters, digits, "_", "." or "-"`);
  if (path === "") throw new RwkvInputError("--adapter", `no PATH after "${name}="`);
  return { name, path };
}
