/** One Server-Sent Event. */
export interface SseEvent {
  event: string;
  data: string;
}

/**
 * The event-stream format (HTML Living Standard, "Parsing an event stream") fed in chunks of
 * text as they arrive: lines end with CRLF, LF or CR; `event:` names, `data:` lines join with
 * LF, a blank line dispatches, comments (`: ping`) and unknown fields are skipped.
 */
export class SseParser {
  #buffer = "";
  #event = "";
  #data: string[] = [];
  #hasData = false;

  constructor(private readonly emit: (e: SseEvent) => void) {}

  feed(chunk: string): void {
    this.#buffer += chunk;
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.#buffer);
      if (!m) return;
      // A CR at the very end may be the first half of a CRLF split across chunks.
      if (m[0] === "\r" && m.index === this.#buffer.length - 1) return;
      const line = this.#buffer.slice(0, m.index);
      this.#buffer = this.#buffer.slice(m.index + m[0].length);
      this.#line(line);
    }
  }

  #line(line: string): void {
    if (line === "") {
      if (this.#hasData) {
        this.emit({ event: this.#event || "message", data: this.#data.join("\n") });
      }
      this.#event = "";
      this.#data = [];
      this.#hasData = false;
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.#event = value;
    else if (field === "data") {
      this.#data.push(value);
      this.#hasData = true;
    }
  }
}
