-- The notify schema. Runs with search_path = notify (payflow_common::db::migrate_schema),
-- so names are unqualified here; the service's queries qualify them with `notify.`.

-- Every consumed message id. Inserted in the same transaction as the
-- notifications, so a redelivered or republished event is stored once.
CREATE TABLE processed_messages (
    message_id   uuid        PRIMARY KEY,
    kind         text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    id             uuid        PRIMARY KEY,
    -- The message id of the event that caused it.
    event_id       uuid        NOT NULL,
    user_id        uuid        NOT NULL,
    type           text        NOT NULL,
    message        text        NOT NULL,
    transaction_id uuid        NULL,
    read           boolean     NOT NULL DEFAULT false,
    read_at        timestamptz NULL,
    -- When the event happened at its producer (created_at is when it was stored here).
    occurred_at    timestamptz NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT notifications_type_known CHECK (type IN
        ('TRANSACTION_COMPLETED', 'TRANSACTION_RECEIVED', 'TRANSACTION_FAILED', 'WELCOME')),
    CONSTRAINT notifications_message_length CHECK (char_length(message) BETWEEN 1 AND 1000),
    CONSTRAINT notifications_read_consistent CHECK (read = (read_at IS NOT NULL)),
    -- Second guard behind processed_messages.
    CONSTRAINT notifications_one_per_event UNIQUE (event_id, user_id, type)
);

-- A transaction reaches its final state exactly once, so even two events with
-- different message ids (a producer that re-emits) give each party one notification.
CREATE UNIQUE INDEX notifications_one_per_transaction
    ON notifications (transaction_id, user_id, type) WHERE transaction_id IS NOT NULL;

-- The list endpoint: a user's newest first.
CREATE INDEX notifications_by_user ON notifications (user_id, created_at DESC, id DESC);

-- One row per delivery attempt through a channel (log, webhook, smtp).
CREATE TABLE deliveries (
    id              bigserial   PRIMARY KEY,
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel         text        NOT NULL,
    result          text        NOT NULL,
    error           text        NULL,
    attempted_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deliveries_result_known CHECK (result IN ('ok', 'failed', 'skipped')),
    CONSTRAINT deliveries_error_with_failure CHECK ((result = 'ok') = (error IS NULL))
);
CREATE INDEX deliveries_by_notification ON deliveries (notification_id);
