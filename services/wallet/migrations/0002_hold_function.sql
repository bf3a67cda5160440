-- The hold of a new pending transfer in one call: one round trip and one commit on the accept
-- path of every payment (instead of BEGIN, three statements and COMMIT from the service).
-- Runs with search_path = wallet; names are qualified anyway.
-- Outcomes: 'created' (transfer inserted, money held), 'exists' (the id is taken: nothing
-- written, the caller compares), 'sender_not_found', 'recipient_not_found', 'currency_mismatch'.
-- Insufficient available funds raise SQLSTATE PF001, which undoes the insert.
CREATE FUNCTION hold(
    p_id uuid, p_from uuid, p_to uuid, p_amount bigint, p_currency text, p_timeout_secs double precision
) RETURNS TABLE (outcome text, created_at timestamptz, timeout_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    v_debit uuid;
    v_debit_currency text;
    v_credit uuid;
    v_credit_currency text;
    v_created timestamptz;
    v_timeout timestamptz;
BEGIN
    SELECT a.id, a.currency::text INTO v_debit, v_debit_currency FROM wallet.accounts a WHERE a.user_id = p_from;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'sender_not_found'::text, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT a.id, a.currency::text INTO v_credit, v_credit_currency FROM wallet.accounts a WHERE a.user_id = p_to;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'recipient_not_found'::text, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_debit_currency <> p_currency OR v_credit_currency <> p_currency THEN
        RETURN QUERY SELECT 'currency_mismatch'::text, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    INSERT INTO wallet.transfers (id, kind, debit_account_id, credit_account_id, amount, currency, state, timeout_at)
    VALUES (p_id, 'payment', v_debit, v_credit, p_amount, p_currency, 'pending',
            now() + make_interval(secs => p_timeout_secs))
    ON CONFLICT (id) DO NOTHING
    RETURNING wallet.transfers.created_at, wallet.transfers.timeout_at INTO v_created, v_timeout;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'exists'::text, NULL::timestamptz, NULL::timestamptz;
        RETURN;
    END IF;
    -- The guarded hold: available balance may not go below zero.
    UPDATE wallet.accounts SET pending_debits = pending_debits + p_amount, updated_at = now()
    WHERE id = v_debit AND balance - pending_debits >= p_amount;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'insufficient funds' USING ERRCODE = 'PF001';
    END IF;
    RETURN QUERY SELECT 'created'::text, v_created, v_timeout;
END;
$$;
