-- Evaluations (`eval`): a base model, or an adapter (of a run, or any folder), measured on a
-- dataset file; metrics are a JSON object of name → value.
CREATE TABLE evaluations (
    id             INTEGER PRIMARY KEY,
    run_id         INTEGER REFERENCES runs (id) ON DELETE CASCADE,
    model          TEXT NOT NULL,
    adapter        TEXT,
    task           TEXT NOT NULL CHECK (task IN ('perplexity', 'generation', 'choice')),
    dataset        TEXT NOT NULL,
    dataset_sha256 TEXT NOT NULL,
    items          INTEGER NOT NULL,
    metrics        TEXT NOT NULL,
    created_at     REAL NOT NULL
);
CREATE INDEX evaluations_by_run ON evaluations (run_id, created_at);
