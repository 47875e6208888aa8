-- The demo's own tables, in the `public` schema of its database (Forge keeps to `forge`).
-- Idempotent: run at every start.

-- Who can sign in. Verification (the workflow) moves `status` along.
CREATE TABLE IF NOT EXISTS accounts (
    id         uuid PRIMARY KEY,
    username   text NOT NULL UNIQUE,
    name       text NOT NULL,
    email      text NOT NULL,
    status     text NOT NULL DEFAULT 'unverified'
               CHECK (status IN ('unverified', 'verifying', 'active'))
);

INSERT INTO accounts (id, username, name, email) VALUES
    ('0a11ce00-0000-4000-8000-000000000001', 'alice', 'Alice Martin', 'alice@example.com'),
    ('0b0b0000-0000-4000-8000-000000000002', 'bob', 'Bob Chen', 'bob@example.com')
ON CONFLICT (id) DO NOTHING;

-- The operator: signs in with the admin role, which opens the dashboard (`/_forge/`).
INSERT INTO accounts (id, username, name, email, status) VALUES
    ('0c0c0000-0000-4000-8000-000000000003', 'ops', 'Olga Ops', 'ops@example.com', 'active')
ON CONFLICT (id) DO NOTHING;

-- What `export_users` exports; seeded with 20,000 generated people below.
CREATE TABLE IF NOT EXISTS users (
    id         integer PRIMARY KEY,
    name       text NOT NULL,
    email      text NOT NULL,
    country    text NOT NULL,
    plan       text NOT NULL,
    signed_up  date NOT NULL
);

-- Deterministic names from the row number: the same data on every machine.
INSERT INTO users (id, name, email, country, plan, signed_up)
SELECT n,
       first || ' ' || last,
       lower(first) || '.' || lower(last) || n || '@example.com',
       (ARRAY['France', 'Germany', 'Japan', 'Brazil', 'Canada', 'India', 'Kenya', 'Spain'])[1 + n % 8],
       (ARRAY['free', 'team', 'business'])[1 + (n * 7) % 3],
       date '2020-01-01' + (n * 37) % 2000
FROM generate_series(1, 20000) AS n,
     LATERAL (SELECT (ARRAY['Ada', 'Grace', 'Alan', 'Linus', 'Margaret', 'Dennis', 'Barbara',
                            'Ken', 'Frances', 'Edsger', 'Radia', 'Donald'])[1 + n % 12] AS first,
                     (ARRAY['Lovelace', 'Hopper', 'Turing', 'Torvalds', 'Hamilton', 'Ritchie',
                            'Liskov', 'Thompson', 'Allen', 'Dijkstra', 'Perlman', 'Knuth',
                            'Wirth'])[1 + (n / 12) % 13] AS last) AS names
-- Seeded once: later starts skip the 20,000 inserts.
WHERE NOT EXISTS (SELECT 1 FROM users)
ON CONFLICT (id) DO NOTHING;

-- The verification emails the workflow "sends": the page shows them as an inbox.
CREATE TABLE IF NOT EXISTS outbox (
    id           uuid PRIMARY KEY,
    workflow_id  uuid NOT NULL UNIQUE,
    owner        text NOT NULL,
    recipient    text NOT NULL,
    subject      text NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    confirmed_at timestamptz,
    -- Set by the compensation when the workflow fails after sending.
    recalled_at  timestamptz
);
