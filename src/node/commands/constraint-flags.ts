import { RwkvInputError } from "../../core/errors.js";
import { compileConstraint, type TokenGrammar } from "../../core/grammar/index.js";
import type { Tokenizer } from "../../core/tokenizer/types.js";
import { UsageError } from "../cli-util.js";
import { readUtf8 } from "./generate.js";

/** `--json-schema FILE` / `--grammar FILE` as a compiled constraint (errors name the flag and file). */
export function constraintFromFiles(schemaFile: string | undefined, grammarFile: string | undefined, tokenizer: Tokenizer, choosable: number): TokenGrammar | undefined {
  if (schemaFile !== undefined && grammarFile !== undefined) throw new UsageError("give --json-schema or --grammar, not both");
  if (grammarFile !== undefined) return compileConstraint({ kind: "gbnf", grammar: readUtf8(grammarFile) }, tokenizer, choosable, `--grammar ${grammarFile}`);
  if (schemaFile === undefined) return undefined;
  const text = readUtf8(schemaFile);
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (e) {
    throw new RwkvInputError(`--json-schema ${schemaFile}`, `is not valid JSON (${(e as Error).message})`);
  }
  return compileConstraint({ kind: "json_schema", schema }, tokenizer, choosable, `--json-schema ${schemaFile}`);
}
