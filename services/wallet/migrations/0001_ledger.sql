-- Wallet ledger. Runs with search_path = wallet.
-- Invariants live in the schema where a constraint can express them; the rest
-- is verified by `payflow ledger-check`.

CREATE TABLE accounts (
    id             uuid PRIMARY KEY,
    -- NULL only for the system (issuer) account of a currency.
    user_id        uuid UNIQUE,
    kind           text NOT NULL CHECK (kind IN ('user', 'system')),
    name           text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- Posted balance in minor units.
    balance        bigint NOT NULL DEFAULT 0,
    -- Sum of this account's pending (held) debits; available = balance - pending_debits.
    pending_debits bigint NOT NULL DEFAULT 0 CHECK (pending_debits >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'user') = (user_id IS NOT NULL)),
    -- Only the issuer may go negative: that is where money "appears" from.
    CHECK (kind = 'system' OR balance - pending_debits >= 0)
);

CREATE UNIQUE INDEX accounts_one_system_per_currency ON accounts (currency) WHERE kind = 'system';

CREATE TABLE transfers (
    id                uuid PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('payment', 'signup_credit', 'tombstone')),
    debit_account_id  uuid REFERENCES accounts (id),
    credit_account_id uuid REFERENCES accounts (id),
    amount            bigint CHECK (amount > 0),
    currency          char(3),
    state             text NOT NULL CHECK (state IN ('pending', 'posted', 'voided')),
    -- A pending transfer's hold expires at this time (then it may be voided).
    timeout_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz,
    CHECK ((state = 'pending') = (resolved_at IS NULL)),
    CHECK (kind = 'tombstone' OR (debit_account_id IS NOT NULL AND credit_account_id IS NOT NULL
        AND amount IS NOT NULL AND currency IS NOT NULL AND debit_account_id <> credit_account_id)),
    -- A void of an id never seen is recorded so that a late create with it is refused.
    CHECK (kind <> 'tombstone' OR (state = 'voided' AND debit_account_id IS NULL
        AND credit_account_id IS NULL AND amount IS NULL))
);

CREATE INDEX transfers_pending_by_timeout ON transfers (timeout_at) WHERE state = 'pending';
CREATE INDEX transfers_debit_account ON transfers (debit_account_id);

CREATE TABLE ledger_entries (
    id          bigserial PRIMARY KEY,
    transfer_id uuid NOT NULL REFERENCES transfers (id),
    account_id  uuid NOT NULL REFERENCES accounts (id),
    -- Signed: negative for the debited account, positive for the credited one.
    amount      bigint NOT NULL CHECK (amount <> 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (transfer_id, account_id)
);

CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id);
