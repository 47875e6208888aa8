// Rows that update live: every unfinished job or workflow on screen is followed over the
// client's one event stream (the admin role may follow anyone's), and its latest state
// replaces what the list read. Rows that scroll off or finish stop being followed.
import {
  followJob,
  followWorkflow,
  isTerminalJobStatus,
  isTerminalWorkflowStatus,
  type ForgeClient,
  type JobSnapshot,
  type WorkflowSnapshot,
} from "@forge/client";

interface Followed<S> {
  subscribe(run: (state: S & { loading: boolean }) => void): () => void;
  unsubscribe(): void;
}

class Live<S extends { status: string }> {
  /** The latest state of each followed run, by id. */
  states = $state<Record<string, S>>({});
  #followed = new Map<string, { stop: () => void }>();

  constructor(
    private readonly follow: (id: string) => Followed<S>,
    private readonly terminal: (status: S["status"]) => boolean,
  ) {}

  /** Follows the unfinished runs among `rows`, and stops following any other. */
  track(rows: { id: string; status: S["status"] }[]): void {
    const wanted = new Set(rows.filter((r) => !this.terminal(r.status)).map((r) => r.id));
    for (const [id, f] of this.#followed) {
      if (!wanted.has(id)) {
        f.stop();
        this.#followed.delete(id);
      }
    }
    for (const id of wanted) {
      if (this.#followed.has(id)) continue;
      const tracker = this.follow(id);
      const off = tracker.subscribe((state) => {
        if (state.loading) return;
        this.states[id] = state;
      });
      this.#followed.set(id, {
        stop: () => {
          off();
          tracker.unsubscribe();
        },
      });
    }
  }

  stop(): void {
    this.track([]);
  }
}

export class LiveJobs extends Live<JobSnapshot> {
  constructor(client: ForgeClient) {
    super((id) => followJob(id, client), isTerminalJobStatus);
  }
}

export class LiveWorkflows extends Live<WorkflowSnapshot> {
  constructor(client: ForgeClient) {
    super((id) => followWorkflow(id, client), isTerminalWorkflowStatus);
  }
}
