-- Posting many pending transfers in one call: the worker's batches cost one round trip and one
-- commit, and the accounts stay locked only while this runs (they were held across seven round
-- trips, and holds on those accounts queued behind them). The same steps, in the same order, as
-- the statements it replaces (ledger.rs `post_many`):
-- 1. the still-pending transfers among p_ids, locked in id order, so overlapping batches queue
--    instead of deadlocking;
-- 2. those transfers posted;
-- 3. their accounts locked in id order (the order hold_batch and void use), then one balance
--    update per account (net balance change, released hold);
-- 4. two ledger entries per posted transfer (debit, credit).
-- Returns every id of p_ids that exists with its state afterwards; a missing id is unknown.
-- The guard is written `(state = 'pending') IS TRUE` so that the planner stays on the primary
-- key (see ledger.rs: the partial index of pending transfers can look empty when it is not).
CREATE FUNCTION post_batch(p_ids uuid[]) RETURNS TABLE (o_id uuid, o_state text)
LANGUAGE plpgsql AS $$
DECLARE
    m_ids uuid[];
    m_debit uuid[];
    m_credit uuid[];
    m_amount bigint[];
BEGIN
    SELECT array_agg(m.id), array_agg(m.debit_account_id), array_agg(m.credit_account_id), array_agg(m.amount)
    INTO m_ids, m_debit, m_credit, m_amount
    FROM (SELECT id, debit_account_id, credit_account_id, amount FROM wallet.transfers WHERE id = ANY(p_ids) AND (state = 'pending') IS TRUE ORDER BY id FOR UPDATE) m;
    IF m_ids IS NOT NULL THEN
        UPDATE wallet.transfers SET state = 'posted', resolved_at = now() WHERE id = ANY(m_ids);
        PERFORM 1 FROM wallet.accounts WHERE id = ANY(m_debit || m_credit) ORDER BY id FOR NO KEY UPDATE;
        UPDATE wallet.accounts a
        SET balance = a.balance + d.balance, pending_debits = a.pending_debits - d.released, updated_at = now()
        FROM (SELECT e.account, sum(e.balance)::bigint AS balance, sum(e.released)::bigint AS released
              FROM unnest(m_debit, m_credit, m_amount) AS u(debit, credit, amount)
              CROSS JOIN LATERAL (VALUES (u.debit, -u.amount, u.amount), (u.credit, u.amount, 0::bigint))
                  AS e(account, balance, released)
              GROUP BY e.account) d
        WHERE a.id = d.account;
        INSERT INTO wallet.ledger_entries (transfer_id, account_id, amount)
        SELECT u.id, e.account, e.amount
        FROM unnest(m_ids, m_debit, m_credit, m_amount) WITH ORDINALITY AS u(id, debit, credit, amount, n)
        CROSS JOIN LATERAL (VALUES (1, u.debit, -u.amount), (2, u.credit, u.amount)) AS e(k, account, amount)
        ORDER BY u.n, e.k;
    END IF;
    RETURN QUERY SELECT t.id, t.state FROM wallet.transfers t WHERE t.id = ANY(p_ids);
END;
$$;
