-- Deliveries through the channels that can fail (webhook, e-mail) not yet done: the
-- notification's row and its rows here commit together, so a delivery survives a crash
-- between that commit and the attempt, and a failed attempt is tried again with backoff
-- (channels::retry). A row goes when its delivery succeeds; one that ran out of attempts
-- stays, marked gave_up_at, for operators to see.
CREATE TABLE delivery_queue (
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel         text        NOT NULL,
    -- The AMQP prefix of the PayFlow that stored it: only that PayFlow's processes deliver it
    -- (several PayFlows may share a database, as the tests do; as the relay does with the outbox).
    prefix          text        NOT NULL,
    -- Attempts made so far.
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When the next attempt is due. While an attempt runs: when it counts as abandoned (the
    -- process died), so another process may take it.
    next_attempt_at timestamptz NOT NULL,
    correlation_id  text        NOT NULL,
    last_error      text        NULL,
    gave_up_at      timestamptz NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, channel)
);
-- The retrier's "what is due" scan.
CREATE INDEX delivery_queue_due ON delivery_queue (next_attempt_at) WHERE gave_up_at IS NULL;
