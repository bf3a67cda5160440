-- wallet.hold_batch (0003) answered 'insufficient_funds' when a second call with the same id
-- (a retry after a timeout) waited on the sender's row behind the first and then found the money
-- already held by that first call; it now answers 'exists'. Otherwise unchanged.
CREATE OR REPLACE FUNCTION hold_batch(
    p_ids uuid[], p_from uuid[], p_to uuid[], p_amounts bigint[], p_currencies text[], p_timeout_secs double precision[]
) RETURNS TABLE (o_id uuid, o_outcome text, o_created_at timestamptz, o_timeout_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT i.id, i.amount, i.currency, i.secs,
               d.id AS debit, d.currency::text AS debit_currency, c.id AS credit, c.currency::text AS credit_currency
        FROM unnest(p_ids, p_from, p_to, p_amounts, p_currencies, p_timeout_secs) WITH ORDINALITY
                 AS i(id, from_user, to_user, amount, currency, secs, n)
        LEFT JOIN wallet.accounts d ON d.user_id = i.from_user
        LEFT JOIN wallet.accounts c ON c.user_id = i.to_user
        ORDER BY d.id, i.n
    LOOP
        o_id := r.id;
        o_created_at := NULL;
        o_timeout_at := NULL;
        IF r.debit IS NULL THEN
            o_outcome := 'sender_not_found';
        ELSIF r.credit IS NULL THEN
            o_outcome := 'recipient_not_found';
        ELSIF r.debit_currency <> r.currency OR r.credit_currency <> r.currency THEN
            o_outcome := 'currency_mismatch';
        ELSIF EXISTS (SELECT 1 FROM wallet.transfers t WHERE t.id = r.id) THEN
            o_outcome := 'exists';
        ELSE
            -- The guarded hold: available balance may not go below zero.
            UPDATE wallet.accounts SET pending_debits = pending_debits + r.amount, updated_at = now()
            WHERE id = r.debit AND balance - pending_debits >= r.amount;
            IF NOT FOUND THEN
                -- Another call of the same id (a retry of a request that timed out) may have held
                -- first: this update waited for its lock, then found too little left. The id is
                -- taken, which the caller compares; answering a refusal would let it drop a
                -- transaction whose money is held.
                IF EXISTS (SELECT 1 FROM wallet.transfers t WHERE t.id = r.id) THEN
                    o_outcome := 'exists';
                ELSE
                    o_outcome := 'insufficient_funds';
                END IF;
            ELSE
                INSERT INTO wallet.transfers
                    (id, kind, debit_account_id, credit_account_id, amount, currency, state, timeout_at)
                VALUES (r.id, 'payment', r.debit, r.credit, r.amount, r.currency, 'pending',
                        now() + make_interval(secs => r.secs))
                ON CONFLICT (id) DO NOTHING
                RETURNING created_at, timeout_at INTO o_created_at, o_timeout_at;
                IF FOUND THEN
                    o_outcome := 'created';
                ELSE
                    -- A concurrent call took the id after the check: give the hold back.
                    UPDATE wallet.accounts SET pending_debits = pending_debits - r.amount WHERE id = r.debit;
                    o_outcome := 'exists';
                END IF;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;
