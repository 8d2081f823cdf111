-- scripts/bench seeding: N clinics (MSP) with one owner each, one connection each to the
-- MIS client 0, and one bearer token each, in four set-based statements (seconds for
-- 100 000 clients, where `mithril seed` inserts row by row). Digests are SHA-256 hex of
-- the plaintext, exactly as src/secrets.rs stores them:
--   token of client i:  bench-token-<i>     secret of connection i: bench-secret-<i>
-- Ids are readable: <kind>-0000-4000-8000-<i as 12 digits>, kind 00000000 user,
-- 00000001 client, 00000002 connection, 00000003 token.
-- usage: psql -v n=100000 -f bench/seed.sql
\set ON_ERROR_STOP on
CREATE FUNCTION pg_temp.bid(kind int, i bigint) RETURNS uuid IMMUTABLE LANGUAGE sql AS
  $$ SELECT (lpad(kind::text, 8, '0') || '-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid $$;
CREATE FUNCTION pg_temp.sha(value text) RETURNS text IMMUTABLE LANGUAGE sql AS
  $$ SELECT encode(sha256(convert_to(value, 'UTF8')), 'hex') $$;

BEGIN;
INSERT INTO users (id, email, locale, is_blocked, inserted_at, updated_at)
SELECT pg_temp.bid(0, i), 'owner' || i || '@bench.invalid', 'uk', false, now(), now()
FROM generate_series(0, :n) AS i;

INSERT INTO clients (id, name, client_type_id, user_id, is_blocked, inserted_at, updated_at)
SELECT pg_temp.bid(1, i), 'bench client ' || i,
       (SELECT id FROM client_types WHERE name = CASE WHEN i = 0 THEN 'MIS' ELSE 'MSP' END),
       pg_temp.bid(0, i), false, now(), now()
FROM generate_series(0, :n) AS i;

INSERT INTO connections (id, client_id, consumer_id, redirect_uri, secret_hash,
                         previous_secret_hash, previous_secret_expires_at, secret_version,
                         inserted_at, updated_at)
SELECT pg_temp.bid(2, i), pg_temp.bid(1, i), pg_temp.bid(1, 0), 'https://mis.bench.invalid/cb',
       pg_temp.sha('bench-secret-' || i), NULL, NULL, 0, now(), now()
FROM generate_series(1, :n) AS i;

INSERT INTO tokens (id, name, value_hash, user_id, details, expires_at, inserted_at, updated_at)
SELECT pg_temp.bid(3, i), 'bench', pg_temp.sha('bench-token-' || i), pg_temp.bid(0, i),
       json_build_object('client_id', pg_temp.bid(1, i),
                         'scope', 'connection:refresh_secret connection:read',
                         'grant_type', 'password'),
       now() + interval '1 day', now(), now()
FROM generate_series(1, :n) AS i;
COMMIT;
ANALYZE;
