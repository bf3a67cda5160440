-- Transactions, idempotency records and the outbox. Runs with search_path = txn.

CREATE TABLE transactions (
    id                    uuid PRIMARY KEY,          -- also the wallet transfer id
    from_user_id          uuid NOT NULL,
    to_user_id            uuid NOT NULL,
    amount                bigint NOT NULL CHECK (amount > 0),
    currency              char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    description           text CHECK (char_length(description) <= 255),
    status                text NOT NULL CHECK (status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')),
    error_message         text,
    correlation_id        text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    processing_started_at timestamptz,
    completed_at          timestamptz,
    CHECK (from_user_id <> to_user_id),
    CHECK ((status IN ('COMPLETED', 'FAILED')) = (completed_at IS NOT NULL)),
    CHECK (status <> 'FAILED' OR error_message IS NOT NULL)
);

-- Ids are UUIDv7, so id order is creation order: newest first is `ORDER BY id DESC`.
CREATE INDEX transactions_by_sender ON transactions (from_user_id, id DESC);
CREATE INDEX transactions_by_receiver ON transactions (to_user_id, id DESC);
-- What the reversal scans.
CREATE INDEX transactions_open ON transactions (created_at) WHERE status IN ('PENDING', 'PROCESSING');

-- One row per (user, Idempotency-Key). `fingerprint` binds the key to the request;
-- `completed_at` NULL means the first request is still in flight.
CREATE TABLE idempotency_keys (
    user_id         uuid NOT NULL,
    key             text NOT NULL CHECK (char_length(key) BETWEEN 1 AND 255),
    fingerprint     bytea NOT NULL,
    transaction_id  uuid,
    response_status smallint,
    response_body   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    PRIMARY KEY (user_id, key),
    CHECK ((completed_at IS NULL) = (response_status IS NULL)),
    CHECK ((completed_at IS NULL) = (response_body IS NULL))
);

CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- Messages written in the same database transaction as the change they
-- announce; the relay publishes them with confirms and marks them.
CREATE TABLE outbox (
    id             bigserial PRIMARY KEY,
    message_id     uuid NOT NULL UNIQUE,
    -- Full exchange name; it starts with the AMQP prefix of the PayFlow that wrote it.
    exchange       text NOT NULL,
    routing_key    text NOT NULL,
    kind           text NOT NULL,
    correlation_id text NOT NULL,
    body           jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);

CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
