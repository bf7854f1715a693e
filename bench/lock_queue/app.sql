-- One application request: read an account, then update it, in one transaction.
\set aid random(1, 100000)
BEGIN;
SELECT abalance FROM accounts WHERE aid = :aid;
UPDATE accounts SET abalance = abalance + 1 WHERE aid = :aid;
END;
