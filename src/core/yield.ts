/*
 * A turn of the event loop for long loops (generation, prefill chunks, evaluation). Awaiting a
 * model call is not enough: the CPU backends finish inside the call, so its promise settles as a
 * microtask and timers, sockets and a page's input would wait until the whole loop ends. A
 * macrotask lets them run between tokens.
 */

type Schedule = (run: () => void) => void;

/** A page's MessageChannel, as much of it as is used here. */
interface Channel {
  readonly port1: { onmessage: (() => void) | null };
  readonly port2: { postMessage(message: null): void };
}

/** Node's setImmediate and a page's MessageChannel, through globalThis so the core compiles with either's types. */
const host = globalThis as unknown as { setImmediate?: Schedule; MessageChannel?: new () => Channel };
const setImmediateFn = host.setImmediate;
const MessageChannelCtor = host.MessageChannel;

let schedule: Schedule | null = null;

function pick(): Schedule {
  // Node: setImmediate runs after pending I/O callbacks and before the next timers; it is the
  // cheapest full turn (a MessageChannel port with a handler would also keep the process alive).
  if (typeof setImmediateFn === "function") return (run) => setImmediateFn(run);
  // Browsers: a message to oneself is a task without setTimeout's 4 ms clamp on nested timers.
  if (typeof MessageChannelCtor === "function") {
    const channel = new MessageChannelCtor();
    const waiting: Array<() => void> = [];
    channel.port1.onmessage = () => waiting.shift()?.();
    return (run) => { waiting.push(run); channel.port2.postMessage(null); };
  }
  return (run) => { setTimeout(run, 0); };
}

/** Resolves on a later macrotask, after the event loop has had a turn. */
export function yieldToEventLoop(): Promise<void> {
  schedule ??= pick();
  const s = schedule;
  return new Promise((resolve) => s(resolve));
}
