import type { Tokenizer } from "../tokenizer/types.js";
import { parseGbnf } from "./gbnf.js";
import { jsonObjectGbnf, jsonSchemaToGbnf } from "./json-schema.js";
import { CompiledGrammar, TokenGrammar } from "./matcher.js";

export { charsMatch, checkGrammar, type Grammar, parseGbnf } from "./gbnf.js";
export { JSON_BASE_GBNF, jsonObjectGbnf, jsonSchemaRules, jsonSchemaToGbnf } from "./json-schema.js";
export { CompiledGrammar, GrammarMatcher, TokenGrammar, TokenTrie, tokenTrie } from "./matcher.js";

/** What to constrain generation to. */
export type ConstraintSpec =
  | { readonly kind: "gbnf"; readonly grammar: string }
  | { readonly kind: "json_object" }
  | { readonly kind: "json_schema"; readonly schema: unknown };

/** The GBNF text of a constraint (errors name `subject`, e.g. "response_format.json_schema.schema"). */
export function constraintGbnf(spec: ConstraintSpec): string {
  if (spec.kind === "gbnf") return spec.grammar;
  if (spec.kind === "json_object") return jsonObjectGbnf();
  return jsonSchemaToGbnf(spec.schema);
}

/**
 * Compiles a constraint for a tokenizer; pass the result as `DecodingOptions.grammar` (the
 * sampler option). `choosable` is the number of token ids that may be sampled (the smaller of the
 * tokenizer's and the model's vocabulary). Reuse one TokenGrammar for many generations: its masks
 * are cached.
 */
export function compileConstraint(spec: ConstraintSpec, tokenizer: Tokenizer, choosable: number, subject?: string): TokenGrammar {
  const sub = subject ?? (spec.kind === "gbnf" ? "grammar" : spec.kind);
  const text = spec.kind === "json_schema" ? jsonSchemaToGbnf(spec.schema, sub) : constraintGbnf(spec);
  return new TokenGrammar(new CompiledGrammar(parseGbnf(text, sub), sub), tokenizer, choosable);
}
