/*
 * The transcript the engine keeps (chat.ts's format: "User: …\n\nAssistant: …\n\n", with an
 * optional "System: …" line first) split into bubbles for display. Text outside that framing
 * (completion mode) is one plain block.
 */

export interface Segment { readonly role: "user" | "assistant" | "system" | "text"; readonly text: string }

const ROLES: ReadonlyArray<[Segment["role"], string]> = [["user", "User:"], ["assistant", "Assistant:"], ["system", "System:"]];

export function parseTranscript(history: string): Segment[] {
  const out: Segment[] = [];
  for (const part of history.split("\n\n")) {
    const hit = ROLES.find(([, p]) => part.startsWith(p));
    if (hit) {
      out.push({ role: hit[0], text: part.slice(hit[1].length).trimStart() });
    } else if (out.length > 0 && out[out.length - 1].role === "text") {
      out[out.length - 1] = { role: "text", text: `${out[out.length - 1].text}\n\n${part}` };
    } else if (part !== "") {
      out.push({ role: "text", text: part });
    }
  }
  return out;
}
