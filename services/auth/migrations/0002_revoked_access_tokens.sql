-- Revoked access tokens, durably. Redis holds the denylist the gateway reads
-- (`payflow:revoked-jti:<jti>`), but a failed write at logout or a Redis that
-- lost its data (a restart without persistence) would let a logged-out token
-- back in until it expired. Auth keeps each revoked token here until its
-- expiry and writes them all to Redis again every few seconds.

-- The `exp` signed into each access token, so a revocation lasts exactly as
-- long as the token, whatever the access-token TTL setting is by then. NULL for
-- tokens issued before this column (or by an older replica during a rollout).
ALTER TABLE refresh_tokens ADD COLUMN access_expires_at timestamptz NULL;

CREATE TABLE revoked_access_tokens (
    jti        uuid        PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_access_tokens_expires_at ON revoked_access_tokens (expires_at);

-- Sessions revoked before this migration: their access tokens' TTL is not
-- known here, so they are kept for a day, far longer than any sensible TTL.
INSERT INTO revoked_access_tokens (jti, expires_at)
SELECT rt.access_jti, rt.created_at + interval '1 day'
FROM refresh_tokens rt
JOIN refresh_token_families f ON f.id = rt.family_id
WHERE f.revoked_at IS NOT NULL AND rt.created_at > now() - interval '1 day'
ON CONFLICT (jti) DO NOTHING;
