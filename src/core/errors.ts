/**
 * Errors caused by input (a file, a flag, a request) rather than by a bug.
 * The message always names the thing and the problem, e.g. "model.pth: truncated: ...".
 * The CLI prints these as one line without a stack trace; the server maps them to 4xx.
 */
export class RwkvInputError extends Error {
  constructor(readonly subject: string, problem: string) {
    super(`${subject}: ${problem}`);
    this.name = "RwkvInputError";
  }
}

/** A file whose bytes are not what its format promises (truncated, bad magic, absurd sizes...). */
export class FormatError extends RwkvInputError {
  constructor(subject: string, problem: string) {
    super(subject, problem);
    this.name = "FormatError";
  }
}
