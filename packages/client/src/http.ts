import { ForgeError } from "./errors.js";
import { parseJson } from "./json.js";

/**
 * Gives the bearer token for the next request, or nothing for an anonymous one. It is asked
 * before every call and every (re)connection of the event stream; after a 401 it is asked once
 * more with `refresh: true` (get a new token then), and the request is retried once with it.
 */
export type TokenProvider = (info: {
  refresh: boolean;
}) => string | null | undefined | Promise<string | null | undefined>;

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

/** The requests of one client: base URL, token, the error envelope, the 64-bit rule. */
export class Http {
  constructor(
    readonly baseUrl: string,
    private readonly fetchFn: FetchLike,
    private readonly tokenProvider: TokenProvider | undefined,
  ) {}

  async token(refresh: boolean): Promise<string | null> {
    if (!this.tokenProvider) return null;
    return (await this.tokenProvider({ refresh })) ?? null;
  }

  url(path: string): string {
    return this.baseUrl + path;
  }

  fetch(input: string, init?: RequestInit): Promise<Response> {
    return this.fetchFn(input, init);
  }

  /** POSTs `body` to `path` and answers the envelope's `data` (or the whole body with `raw`). */
  async post(path: string, body: unknown, raw = false): Promise<unknown> {
    let token = await this.token(false);
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { "content-type": "application/json", accept: "application/json" };
      if (token) headers.authorization = `Bearer ${token}`;
      let res: Response;
      try {
        res = await this.fetchFn(this.url(path), { method: "POST", headers, body: JSON.stringify(body) });
      } catch (e) {
        throw new ForgeError("network", `no answer from the server: ${(e as Error)?.message ?? e}`, { cause: e });
      }
      if (res.status === 401 && attempt === 0 && this.tokenProvider) {
        const fresh = await this.token(true);
        // An unchanged token would only be refused again.
        if (fresh && fresh !== token) {
          await res.body?.cancel().catch(() => {});
          token = fresh;
          continue;
        }
      }
      return readAnswer(res, raw);
    }
  }
}

async function readAnswer(res: Response, raw: boolean): Promise<unknown> {
  let text: string;
  try {
    text = await res.text();
  } catch (e) {
    throw new ForgeError("network", `the answer broke off: ${(e as Error)?.message ?? e}`, { cause: e });
  }
  let body: unknown = undefined;
  if (text !== "") {
    try {
      body = parseJson(text);
    } catch (e) {
      // A proxy's HTML error page says more through its status than through its text.
      if (!res.ok && (e as ForgeError).code === "bad_response") throw httpError(res.status);
      throw e;
    }
  }
  if (!res.ok) {
    const envelope = (body as { error?: unknown } | undefined)?.error;
    if (envelope !== undefined) throw ForgeError.fromEnvelope(envelope, res.status);
    throw httpError(res.status);
  }
  if (raw) return body;
  if (body === null || typeof body !== "object" || !("data" in body)) {
    throw new ForgeError("bad_response", "the server's answer has no `data`", { status: res.status });
  }
  return (body as { data: unknown }).data;
}

function httpError(status: number): ForgeError {
  const code = status === 401 ? "unauthenticated" : status >= 500 ? "unavailable" : "bad_response";
  return new ForgeError(code, `the server answered HTTP ${status}`, { status });
}
