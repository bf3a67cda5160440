-- The auth schema. Runs with search_path = auth (payflow_common::db::migrate_schema),
-- so names are unqualified here; the service's queries qualify them with `auth.`.

CREATE TABLE users (
    id             uuid        PRIMARY KEY,
    -- Stored normalised (lower case), so the unique constraint is the one
    -- arbiter of "Email already registered", also under concurrent sign-ups.
    email          text        NOT NULL,
    name           text        NOT NULL,
    password_hash  text        NOT NULL,
    role           text        NOT NULL DEFAULT 'user',
    -- False between the insert and wallet's answer; login retries the
    -- (idempotent) wallet creation for a user a crash left without one.
    wallet_created boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz NULL,
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_lower CHECK (email = lower(email)),
    CONSTRAINT users_email_shape CHECK (char_length(email) BETWEEN 3 AND 254 AND position('@' IN email) > 1),
    CONSTRAINT users_name_length CHECK (char_length(name) BETWEEN 2 AND 100 AND name = btrim(name)),
    CONSTRAINT users_password_hash_present CHECK (password_hash <> ''),
    CONSTRAINT users_role_known CHECK (role IN ('user', 'admin')),
    CONSTRAINT users_last_login_after_creation CHECK (last_login_at IS NULL OR last_login_at >= created_at)
);

-- One login session: the chain of refresh tokens that rotation produces.
-- Revoking the family ends every token of it (logout, or reuse of a rotated token).
CREATE TABLE refresh_token_families (
    id             uuid        PRIMARY KEY,
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz NULL,
    revoked_reason text        NULL,
    CONSTRAINT refresh_token_families_reason_known
        CHECK (revoked_reason IN ('logout', 'reuse')),
    CONSTRAINT refresh_token_families_revocation_complete
        CHECK ((revoked_at IS NULL) = (revoked_reason IS NULL))
);
CREATE INDEX refresh_token_families_user_id ON refresh_token_families (user_id);

-- Only the SHA-256 of a token is stored; the token itself exists only at the client.
-- Each row is issued together with exactly one access token (`access_jti`), which
-- lets logout find the session of an access token and lets auth refuse access
-- tokens of a revoked family even when Redis has lost the revocation list.
CREATE TABLE refresh_tokens (
    token_hash bytea       PRIMARY KEY,
    family_id  uuid        NOT NULL REFERENCES refresh_token_families (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    access_jti uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- Set when the token is rotated; presenting it again is reuse.
    used_at    timestamptz NULL,
    CONSTRAINT refresh_tokens_hash_is_sha256 CHECK (octet_length(token_hash) = 32),
    CONSTRAINT refresh_tokens_access_jti_key UNIQUE (access_jti),
    CONSTRAINT refresh_tokens_expiry_after_creation CHECK (expires_at > created_at),
    CONSTRAINT refresh_tokens_used_after_creation CHECK (used_at IS NULL OR used_at >= created_at)
);
CREATE INDEX refresh_tokens_family_id ON refresh_tokens (family_id);
-- A family has at most one live (unrotated) token at any time.
CREATE UNIQUE INDEX refresh_tokens_one_live_per_family ON refresh_tokens (family_id) WHERE used_at IS NULL;

-- Failed logins per normalised (trimmed, lower-cased) email as typed at login,
-- whether or not an account exists, so throttling reveals nothing about accounts.
CREATE TABLE login_throttle (
    email             text        PRIMARY KEY,
    failures          integer     NOT NULL,
    window_started_at timestamptz NOT NULL,
    locked_until      timestamptz NULL,
    CONSTRAINT login_throttle_email_length CHECK (char_length(email) BETWEEN 1 AND 254),
    CONSTRAINT login_throttle_failures_positive CHECK (failures >= 0),
    CONSTRAINT login_throttle_lock_after_window_start CHECK (locked_until IS NULL OR locked_until > window_started_at)
);

-- Security events. No foreign key on user_id: the trail outlives the user and
-- also records failures for emails without an account.
CREATE TABLE audit_log (
    id         bigserial   PRIMARY KEY,
    user_id    uuid        NULL,
    event      text        NOT NULL,
    ip         text        NULL,
    detail     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT audit_log_event_known CHECK (event IN (
        'register', 'login_success', 'login_failure', 'login_lockout',
        'refresh', 'refresh_reuse', 'logout'
    )),
    CONSTRAINT audit_log_detail_is_object CHECK (jsonb_typeof(detail) = 'object')
);
CREATE INDEX audit_log_user_id_created_at ON audit_log (user_id, created_at) WHERE user_id IS NOT NULL;
CREATE INDEX audit_log_created_at ON audit_log (created_at);
