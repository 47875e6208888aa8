-- The app's own tables, in the `public` schema of its database (Forge keeps to its `forge`
-- schema). Run at every start, so every statement must be safe to repeat.

CREATE TABLE IF NOT EXISTS notes (
    id         uuid PRIMARY KEY,
    -- The user the note belongs to: the session token's `sub`.
    owner      text NOT NULL,
    text       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS notes_by_owner ON notes (owner, created_at DESC);
