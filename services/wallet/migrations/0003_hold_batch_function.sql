-- The holds of many new pending transfers in one call: one round trip and one commit for all the
-- payments accepted at the same moment (the transaction service batches concurrent requests).
-- Each item gets its own outcome; one item's refusal does not undo the others:
-- 'created' (transfer inserted, money held), 'exists' (the id is taken: nothing written, the
-- caller compares), 'insufficient_funds', 'sender_not_found', 'recipient_not_found',
-- 'currency_mismatch'.
-- Debit accounts are locked in account id order, the order post_many and move_money use, so
-- concurrent batches cannot deadlock one another or a posting; one account's holds are placed
-- in the order given (the first come are the first served).
-- wallet.hold (0002) stays for wallet pods of the previous release during a rolling update.
CREATE FUNCTION hold_batch(
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
                o_outcome := 'insufficient_funds';
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
