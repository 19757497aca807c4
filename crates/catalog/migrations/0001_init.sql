-- The first schema. Times are Unix seconds (REAL); configs are JSON text.

CREATE TABLE models (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    path         TEXT NOT NULL UNIQUE,
    architecture TEXT,
    added_at     REAL NOT NULL
);

CREATE TABLE datasets (
    id       INTEGER PRIMARY KEY,
    path     TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    bytes    INTEGER NOT NULL,
    added_at REAL NOT NULL,
    UNIQUE (path, sha256)
);

CREATE TABLE runs (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL,
    model_id          INTEGER REFERENCES models (id) ON DELETE SET NULL,
    dataset_id        INTEGER REFERENCES datasets (id) ON DELETE SET NULL,
    method            TEXT NOT NULL,
    config            TEXT NOT NULL,
    out_dir           TEXT NOT NULL,
    status            TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    device            TEXT NOT NULL,
    error             TEXT,
    pid               INTEGER,
    heartbeat_at      REAL,
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    total_steps       INTEGER,
    peak_memory_bytes INTEGER,
    created_at        REAL NOT NULL,
    queued_at         REAL NOT NULL,
    started_at        REAL,
    finished_at       REAL
);
CREATE INDEX runs_by_status ON runs (status, device, queued_at);

-- One row per optimiser step; step 0 holds the baseline evaluation.
CREATE TABLE metrics (
    run_id       INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step         INTEGER NOT NULL,
    epoch        INTEGER,
    tokens_seen  INTEGER,
    wall_s       REAL,
    loss         REAL,
    eval_loss    REAL,
    lr           REAL,
    grad_norm    REAL,
    tokens_per_s REAL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
-- Validation rows are a few hundred among many thousand steps: a covering index reads them
-- without touching the rest.
CREATE INDEX metrics_evals ON metrics (run_id, step, eval_loss, epoch, tokens_seen, wall_s)
    WHERE eval_loss IS NOT NULL;

-- Training loss summarised over buckets of `level` steps (mean, min, max), kept up to date
-- as metrics arrive, so that comparing long runs reads thousands of rows, not millions.
CREATE TABLE metric_rollups (
    run_id     INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    level      INTEGER NOT NULL,
    bucket     INTEGER NOT NULL,
    n          INTEGER NOT NULL,
    step_max   INTEGER NOT NULL,
    epoch_max  INTEGER,
    tokens_max INTEGER,
    wall_max   REAL,
    loss_sum   REAL NOT NULL,
    loss_min   REAL NOT NULL,
    loss_max   REAL NOT NULL,
    PRIMARY KEY (run_id, level, bucket)
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    run_id     INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    path       TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE adapters (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER REFERENCES runs (id) ON DELETE SET NULL,
    path       TEXT NOT NULL,
    method     TEXT NOT NULL,
    base_model TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE tags (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    tag    TEXT NOT NULL,
    PRIMARY KEY (run_id, tag)
);

CREATE TABLE notes (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    body       TEXT NOT NULL,
    created_at REAL NOT NULL
);
