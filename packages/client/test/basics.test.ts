import { describe, expect, it } from "vitest";
import { backoffDelay, ForgeError, parseJson, resolveBackoff } from "../src/index.js";
import { SseParser, type SseEvent } from "../src/sse.js";

describe("backoff", () => {
  it("grows by its factor up to the cap", () => {
    const o = resolveBackoff({ initialMs: 100, factor: 2, maxMs: 1_000, jitter: 0, random: () => 0.99 });
    expect([0, 1, 2, 3, 4, 5, 10, 50].map((a) => backoffDelay(a, o))).toEqual([
      100, 200, 400, 800, 1000, 1000, 1000, 1000,
    ]);
  });

  it("keeps jitter within [d * (1 - jitter), d]", () => {
    const low = resolveBackoff({ initialMs: 1000, maxMs: 8000, jitter: 0.5, random: () => 0.999999 });
    const high = resolveBackoff({ initialMs: 1000, maxMs: 8000, jitter: 0.5, random: () => 0 });
    for (let a = 0; a < 6; a++) {
      const d = Math.min(8000, 1000 * 2 ** a);
      expect(backoffDelay(a, high)).toBe(d);
      expect(backoffDelay(a, low)).toBe(Math.round(d * 0.5));
    }
    const r = resolveBackoff({ initialMs: 1000, maxMs: 8000, jitter: 0.3 });
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(2, r);
      expect(d).toBeGreaterThanOrEqual(2800);
      expect(d).toBeLessThanOrEqual(4000);
    }
  });

  it("refuses settings that cannot work", () => {
    expect(() => resolveBackoff({ initialMs: 10, maxMs: 5 })).toThrow(RangeError);
    expect(() => resolveBackoff({ jitter: 2 })).toThrow(RangeError);
    expect(() => resolveBackoff({ factor: 0.5 })).toThrow(RangeError);
  });
});

describe("parseJson", () => {
  it("keeps safe integers and floats", () => {
    expect(parseJson('{"a": 9007199254740991, "b": -9007199254740991, "c": 1.5, "d": [1, 2]}')).toEqual({
      a: 9007199254740991,
      b: -9007199254740991,
      c: 1.5,
      d: [1, 2],
    });
  });

  it("refuses integers beyond 2^53 - 1 with precision_loss naming the field", () => {
    for (const text of ['{"rows": 9007199254740993}', '{"rows": -9223372036854775808}', "[18446744073709551615]"]) {
      let error: unknown;
      try {
        parseJson(text);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(ForgeError);
      expect((error as ForgeError).code).toBe("precision_loss");
    }
    expect(() => parseJson('{"rows": 9007199254740993}')).toThrow(/field `rows`/);
  });

  it("says bad_response for text that is not JSON", () => {
    expect(() => parseJson("<html>")).toThrow(expect.objectContaining({ code: "bad_response" }));
  });
});

describe("SseParser", () => {
  const parse = (chunks: string[]) => {
    const out: SseEvent[] = [];
    const p = new SseParser((e) => out.push(e));
    for (const c of chunks) p.feed(c);
    return out;
  };

  it("dispatches on blank lines, joins data lines, skips comments", () => {
    expect(parse([": ping\n\n", "event: job\ndata: {\"a\":\ndata: 1}\n\n", "data: x\n\n"])).toEqual([
      { event: "job", data: '{"a":\n1}' },
      { event: "message", data: "x" },
    ]);
  });

  it("reassembles events split anywhere, with CRLF, LF or CR line ends", () => {
    const text = "event: session\r\ndata: {\"sessionId\":\"s\"}\r\n\r\nevent: job\rdata: 2\r\revent: query\ndata: 3\n\n";
    const whole = parse([text]);
    expect(whole.map((e) => e.event)).toEqual(["session", "job", "query"]);
    for (let cut = 1; cut < text.length; cut++) {
      expect(parse([text.slice(0, cut), text.slice(cut)])).toEqual(whole);
    }
    expect(parse(text.split(""))).toEqual(whole);
  });

  it("keeps an event without its blank line pending", () => {
    expect(parse(["event: job\ndata: 1\n"])).toEqual([]);
  });
});
