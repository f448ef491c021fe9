-- The whole first schema: datasets, jobs, their event history and checkpoints.
-- Timestamps are RFC 3339 UTC text; JSON columns hold serde-serialised structs so the API can
-- return them without a second model of the same data.

CREATE TABLE datasets (
    id               TEXT PRIMARY KEY NOT NULL,
    name             TEXT NOT NULL,
    -- [{"name": "cats", "images": 1000}, ...], sorted by name: the order defines label indices.
    classes          TEXT NOT NULL,
    image_count      INTEGER NOT NULL,
    -- Files in the archive that were not decodable images (counted, never fatal).
    skipped          INTEGER NOT NULL,
    skipped_examples TEXT NOT NULL,
    size_bytes       INTEGER NOT NULL,
    created_at       TEXT NOT NULL
);

CREATE TABLE jobs (
    -- UUIDv7: ordering by id is ordering by submission, which is the queue order.
    id                    TEXT PRIMARY KEY NOT NULL,
    name                  TEXT,
    -- No foreign key: a finished job keeps naming the dataset it used after that is deleted;
    -- deleting a dataset a queued or running job uses is refused by the API.
    dataset_id            TEXT NOT NULL,
    validation_dataset_id TEXT,
    spec                  TEXT NOT NULL,
    -- The model summary, computed once when the spec is accepted.
    summary               TEXT NOT NULL,
    state                 TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    phase_index           INTEGER,
    phase_name            TEXT,
    epoch                 INTEGER,
    latest_metrics        TEXT,
    test_metrics          TEXT,
    error                 TEXT,
    -- How many times a worker has started it (more than one after a crash or shutdown).
    attempts              INTEGER NOT NULL DEFAULT 0,
    created_at            TEXT NOT NULL,
    started_at            TEXT,
    finished_at           TEXT
);

CREATE INDEX jobs_by_state ON jobs (state, id);

-- Everything a job reported, in order: the SSE stream replays this, then follows live.
CREATE TABLE job_events (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- Per-job sequence number, the SSE `id:`; assigned by the insert itself.
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    id             TEXT PRIMARY KEY NOT NULL,
    job_id         TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    phase_index    INTEGER NOT NULL,
    phase_name     TEXT NOT NULL,
    epoch          INTEGER NOT NULL,
    global_step    INTEGER NOT NULL,
    val_loss       REAL,
    val_accuracy   REAL,
    path           TEXT NOT NULL,
    size_bytes     INTEGER NOT NULL,
    sha256         TEXT NOT NULL,
    -- Optimizer state is only kept for the newest checkpoint (the one a resume starts from);
    -- NULL once superseded and its file deleted.
    optimizer_path TEXT,
    resume_state   TEXT NOT NULL,
    created_at     TEXT NOT NULL
);

CREATE INDEX checkpoints_by_job ON checkpoints (job_id, phase_index, epoch);
