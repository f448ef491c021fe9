-- Webhook deliveries (an outbox): a message is written in the transaction that ends its job, so
-- no end is lost to a crash, and delivered, with retries, by the dispatcher afterwards.
CREATE TABLE webhook_messages (
    -- `msg_<uuid>`: the `webhook-id` header, the same on every attempt (receivers dedupe by it).
    id              TEXT PRIMARY KEY,
    job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    -- `job.succeeded`, `job.failed` or `job.canceled`.
    event_type      TEXT NOT NULL,
    url             TEXT NOT NULL,
    -- The exact body posted (JSON), signed anew at each attempt with that attempt's timestamp.
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    created_at      TEXT NOT NULL,
    -- When a pending message is next tried; while an attempt runs, when it may be taken over
    -- (a process that died mid-attempt). NULL once delivered or given up.
    next_attempt_at TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX webhook_messages_due ON webhook_messages (state, next_attempt_at);
CREATE INDEX webhook_messages_by_job ON webhook_messages (job_id);

-- Every delivery attempt and what came of it.
CREATE TABLE webhook_attempts (
    message_id  TEXT NOT NULL REFERENCES webhook_messages (id) ON DELETE CASCADE,
    -- 1 for the first attempt.
    attempt     INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    -- The receiver's HTTP status; NULL when no answer came (refused, timed out).
    status_code INTEGER,
    -- Why the attempt failed, NULL when it succeeded.
    error       TEXT,
    PRIMARY KEY (message_id, attempt)
) WITHOUT ROWID;
