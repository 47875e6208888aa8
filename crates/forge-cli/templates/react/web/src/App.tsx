import { useState, useSyncExternalStore, type FormEvent } from "react";
import { isTerminalJobStatus, useForgeClient } from "@forge/react";
import { addNote, useLiveNotes, useTrackProcessItems } from "./lib/forge/api";

export function App() {
  return (
    <main>
      <header className="row">
        <h1>{{name}}</h1>
        <Connection />
      </header>
      <ProcessItems />
      <Notes />
    </main>
  );
}

/** The event stream's state: `open`, or `reconnecting` while `npm run dev` restarts the server. */
function Connection() {
  const client = useForgeClient();
  const { status } = useSyncExternalStore(
    (onChange) => client.connection.subscribe(onChange),
    () => client.connection.state,
  );
  return (
    <span className="muted" data-testid="connection" data-status={status}>
      {status === "open" ? "live" : status}
    </span>
  );
}

function ProcessItems() {
  const [count, setCount] = useState(20);
  // `start(args)` starts the job and follows it in one request, so no update is missed;
  // `state` is the last started job's, kept current.
  const job = useTrackProcessItems();
  const state = job.state;
  const running = !!state && (state.loading || !isTerminalJobStatus(state.status));

  return (
    <section className="card">
      <h2>Process items</h2>
      <p className="muted">
        A background job (<code>src/items.rs</code>) that reports its progress as it goes.
      </p>
      <div className="row">
        <label htmlFor="count">Items</label>
        <input
          id="count"
          type="number"
          min={1}
          max={1000}
          value={count}
          onChange={(e) => setCount(e.target.valueAsNumber)}
          data-testid="count"
        />
        <button onClick={() => job.start({ count })} disabled={running} data-testid="start">
          Start
        </button>
        {state?.status === "running" && (
          <button onClick={() => job.tracker?.cancel()} data-testid="cancel">
            Cancel
          </button>
        )}
      </div>
      {state && !state.loading && (
        <>
          <progress max={100} value={state.progress ?? 0} data-testid="progress" data-progress={state.progress ?? 0} />
          <p data-testid="job-status" data-status={state.status}>
            {state.status}
            {state.message ? `: ${state.message}` : ""}
          </p>
          {state.status === "completed" && state.output && (
            <p data-testid="job-output">Done: {state.output.processed} items processed.</p>
          )}
          {state.error && (
            <p className="error" data-testid="job-error">
              {state.error}
            </p>
          )}
        </>
      )}
    </section>
  );
}

function Notes() {
  // A live query: the list updates by itself when a note is added, from this tab or another.
  const notes = useLiveNotes();
  const [text, setText] = useState("");
  const [error, setError] = useState("");

  async function add(event: FormEvent) {
    event.preventDefault();
    try {
      await addNote({ text });
      setText("");
      setError("");
    } catch (e) {
      // Refusals (`Error::invalid_arg` in Rust) arrive with their message.
      setError(e instanceof Error ? e.message : String(e));
    }
  }

  return (
    <section className="card">
      <h2>Notes</h2>
      <form className="row" onSubmit={add}>
        <input
          type="text"
          placeholder="Write a note"
          value={text}
          onChange={(e) => setText(e.target.value)}
          data-testid="note-text"
        />
        <button type="submit" data-testid="add-note">
          Add
        </button>
      </form>
      {error && <p className="error">{error}</p>}
      {notes.data?.length ? (
        <ul data-testid="notes">
          {notes.data.map((note) => (
            <li key={note.id}>
              {note.text} <span className="muted">{new Date(note.createdAt).toLocaleTimeString()}</span>
            </li>
          ))}
        </ul>
      ) : (
        !notes.loading && <p className="muted">No notes yet.</p>
      )}
    </section>
  );
}
