import { cleanMessage, TURN_SEPARATOR } from "../../core/chat.js";

/*
 * OpenAI chat messages rendered as the official RWKV World / G1 chat prompt (SPEC §10.3):
 *
 *   System: {system}\n\nUser: {msg}\n\nAssistant: {reply}\n\nUser: {msg}\n\nAssistant:
 *
 * every message cleaned as ChatRWKV does (cleanMessage: CRLF → LF, runs of blank lines → one newline,
 * stripped), turns joined with "\n\n", and the prompt ending in "{assistant}:" with no trailing
 * space (the model writes the space itself). The speaker names are configurable for models tuned
 * on other names (e.g. Raven's "Bob"/"Alice").
 *
 * The rendering is prefix-stable: the prompt of the next turn of a conversation (this prompt's
 * messages + the returned reply + new messages) starts with this prompt + continuation(reply). The
 * server relies on that to cache the state after a reply for the next turn.
 */

export interface ChatNames {
  readonly user: string;
  readonly assistant: string;
  readonly system: string;
}

export const DEFAULT_CHAT_NAMES: ChatNames = { user: "User", assistant: "Assistant", system: "System" };

export type ChatRole = "system" | "user" | "assistant";

export interface ChatMessage {
  readonly role: ChatRole;
  readonly content: string;
}

/** "Name: text", or just "Name:" for an empty message (no dangling space). */
function turn(name: string, text: string): string {
  return text === "" ? `${name}:` : `${name}: ${text}`;
}

function nameOf(role: ChatRole, names: ChatNames): string {
  return role === "system" ? names.system : role === "user" ? names.user : names.assistant;
}

/** The whole prompt: every message as a turn, then the assistant's name and a colon. */
export function renderChatPrompt(messages: readonly ChatMessage[], names: ChatNames = DEFAULT_CHAT_NAMES): string {
  const turns = messages.map((m) => turn(nameOf(m.role, names), cleanMessage(m.content)));
  turns.push(`${names.assistant}:`);
  return turns.join(TURN_SEPARATOR);
}

/**
 * What the next turn's prompt adds right after this prompt when the client sends `reply` back as
 * the assistant message: " {cleaned reply}" and the turn separator.
 */
export function replyContinuation(reply: string): string {
  const text = cleanMessage(reply);
  return (text === "" ? "" : ` ${text}`) + TURN_SEPARATOR;
}

/** A reply as handed to the client: without the leading space (or newlines) the model wrote after "Assistant:". */
export function trimReplyStart(text: string): string {
  return text.replace(LEADING_SPACE, "");
}

const LEADING_SPACE = /^\s+/;
