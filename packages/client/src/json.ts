import { ForgeError } from "./errors.js";

// A 64-bit integer above 2^53 - 1 cannot be a JavaScript number without changing its value.
// Every JSON the client receives goes through this reviver, so such a value fails loudly
// (`precision_loss`) instead of turning into a neighbouring number. Where the engine gives the
// reviver the source text (JSON.parse source text access), only integer literals are checked;
// elsewhere any integral number beyond the safe range is refused (which also refuses a float
// such as 1e300: send those as strings too).
function reviver(this: unknown, key: string, value: unknown, context?: { source?: string }): unknown {
  if (typeof value === "number" && !Number.isSafeInteger(value) && Number.isInteger(value)) {
    const source = context?.source;
    if (source === undefined || /^-?\d+$/.test(source)) {
      throw new ForgeError(
        "precision_loss",
        `the integer ${source ?? value}${key ? ` (field \`${key}\`)` : ""} is beyond 2^53 - 1 and cannot be a JavaScript number exactly: send it as a string`,
      );
    }
  }
  return value;
}

/** `JSON.parse` with the 64-bit rule; throws ForgeError (`precision_loss` or `bad_response`). */
export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text, reviver as (this: unknown, key: string, value: unknown) => unknown);
  } catch (e) {
    if (e instanceof ForgeError) throw e;
    throw new ForgeError("bad_response", `the server's answer is not JSON: ${(e as Error).message}`, {
      cause: e,
    });
  }
}
