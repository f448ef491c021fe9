-- The first answer to a POST sent with an `Idempotency-Key`, so that a retry of the same request
-- gets that answer instead of creating a second job or dataset.
CREATE TABLE idempotency_keys (
    -- The operation the key was used on (`create_job`, `create_dataset`): keys are per operation.
    operation    TEXT NOT NULL,
    key          TEXT NOT NULL,
    -- Which request holds the key: every later statement of that request names it, so a stale
    -- one can never touch a row that another request has since reserved.
    token        TEXT NOT NULL,
    -- SHA-256 (hex) of what the request asked for; a retry must match it. Set, with
    -- resource_id, in the transaction that creates the job or dataset: a crash after that commit
    -- still knows what the key created.
    request_hash TEXT,
    resource_id  TEXT,
    -- NULL, with response, until the answer is recorded.
    status       INTEGER,
    -- The response body sent the first time (JSON).
    response     TEXT,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (operation, key)
) WITHOUT ROWID;

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
