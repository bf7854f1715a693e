-- One application request: read an account, then update it, in one transaction (ids 1..:rows).
\set aid random(1, :rows)
BEGIN;
SELECT abalance FROM accounts WHERE aid = :aid;
UPDATE accounts SET abalance = abalance + 1 WHERE aid = :aid;
END;
