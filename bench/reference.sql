-- Reference schema and data for the "tenant notes" workload, measured with pgbench
-- (see ../../shared/bench/README.md and bench/run).
--
-- A psql script, run as a superuser while connected to any other database of the cluster:
--
--     psql -v ON_ERROR_STOP=1 -d postgres -f bench/reference.sql
--
-- It (re)creates the database bench_ref and two login roles:
--   bench_app    an ordinary role: RLS applies (the "per-request transaction" row)
--   bench_norls  BYPASSRLS: the "one autocommit statement, no RLS" row
-- Both have their name as password (the embedded cluster requires scram-sha-256 passwords).
--
-- Ids are computable, so pgbench scripts pick a random org/note from two random integers
-- without a lookup round trip:
--   org  n (1..100)                      md5('org'  || n)::uuid
--   user u (1..5) of org n               md5('user' || n || '-' || u)::uuid
--   note k (1..1000) of org n            md5('note' || n || '-' || k)::uuid
-- The lookup tables bench_orgs / bench_users / bench_notes hold the same ids.

\set ON_ERROR_STOP on
SET client_min_messages = warning;

DROP DATABASE IF EXISTS bench_ref WITH (FORCE);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_app') THEN
        CREATE ROLE bench_app LOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'bench_norls') THEN
        CREATE ROLE bench_norls LOGIN;
    END IF;
END
$$;
ALTER ROLE bench_app   LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD 'bench_app';
ALTER ROLE bench_norls LOGIN NOSUPERUSER BYPASSRLS   NOCREATEDB NOCREATEROLE PASSWORD 'bench_norls';

CREATE DATABASE bench_ref;
\connect bench_ref
SET client_min_messages = warning;

CREATE TABLE notes (
    org_id     uuid        NOT NULL,
    id         uuid        NOT NULL DEFAULT gen_random_uuid(),
    title      text        NOT NULL CHECK (length(title) BETWEEN 1 AND 500),
    body       text        NOT NULL DEFAULT '' CHECK (length(body) <= 100000),
    tags       text[]      NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    created_by uuid        NOT NULL,
    updated_by uuid        NOT NULL,
    PRIMARY KEY (org_id, id)
);
CREATE INDEX notes_recent_idx ON notes (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;

ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON notes
    USING (org_id = current_setting('app.org_id')::uuid)
    WITH CHECK (org_id = current_setting('app.org_id')::uuid);

-- Lookup tables: n → id (not needed by the scripts, which compute the ids; for checks and
-- for clients that want to pick ids by lookup).
CREATE TABLE bench_orgs (
    n  int  PRIMARY KEY,
    id uuid NOT NULL UNIQUE
);
CREATE TABLE bench_users (
    org_n int  NOT NULL,
    n     int  NOT NULL,
    id    uuid NOT NULL UNIQUE,
    PRIMARY KEY (org_n, n)
);
CREATE TABLE bench_notes (
    org_n  int  NOT NULL,
    n      int  NOT NULL,
    org_id uuid NOT NULL,
    id     uuid NOT NULL,
    PRIMARY KEY (org_n, n)
);

INSERT INTO bench_orgs (n, id)
SELECT o, md5('org' || o)::uuid FROM generate_series(1, 100) AS o;

INSERT INTO bench_users (org_n, n, id)
SELECT o, u, md5('user' || o || '-' || u)::uuid
  FROM generate_series(1, 100) AS o, generate_series(1, 5) AS u;

INSERT INTO bench_notes (org_n, n, org_id, id)
SELECT o, k, md5('org' || o)::uuid, md5('note' || o || '-' || k)::uuid
  FROM generate_series(1, 100) AS o, generate_series(1, 1000) AS k;

-- 100 orgs × 1000 notes: title 40 chars, body 500 chars, written by the org's 5 users in turn,
-- one note a minute per org (note 1000 is the newest).
INSERT INTO notes (org_id, id, title, body, tags, created_at, updated_at, deleted_at,
                   created_by, updated_by)
SELECT md5('org' || o)::uuid,
       md5('note' || o || '-' || k)::uuid,
       left(format('Note %s-%s ', o, k) || md5('title' || o || '-' || k), 40),
       left(repeat(md5('body' || o || '-' || k) || ' ', 16), 500),
       ARRAY['bench', 'tag' || (k % 7)],
       timestamptz '2026-01-01 00:00:00+00' + k * interval '1 minute',
       timestamptz '2026-01-01 00:00:00+00' + k * interval '1 minute',
       NULL,
       md5('user' || o || '-' || (1 + k % 5))::uuid,
       md5('user' || o || '-' || (1 + k % 5))::uuid
  FROM generate_series(1, 100) AS o, generate_series(1, 1000) AS k
 ORDER BY o, k;

-- The same-work W1 reference: what a team following the seeds writes by hand for "create a
-- note". The note's author is a member of its organization (composite foreign key), and an
-- AFTER INSERT trigger in plpgsql writes the audit entry in the same transaction (seed 002's
-- audit_trigger(): the row as JSON, the actor, the organization, the table, the record id, the
-- client address and the time) into an audit table with the indexes an audit query needs
-- (by organization and time, by record, by actor). W1 against this table is bench/pgbench/
-- w1_audited.sql; the bare insert into `notes` stays as a row for information.
CREATE TABLE members (
    org_id  uuid NOT NULL,
    user_id uuid NOT NULL,
    role    text NOT NULL DEFAULT 'member',
    PRIMARY KEY (org_id, user_id)
);
INSERT INTO members (org_id, user_id)
SELECT md5('org' || o)::uuid, md5('user' || o || '-' || u)::uuid
  FROM generate_series(1, 100) AS o, generate_series(1, 5) AS u;

CREATE TABLE notes_audited (LIKE notes INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES,
    FOREIGN KEY (org_id, created_by) REFERENCES members (org_id, user_id));
ALTER TABLE notes_audited ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes_audited FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON notes_audited
    USING (org_id = current_setting('app.org_id')::uuid)
    WITH CHECK (org_id = current_setting('app.org_id')::uuid);

CREATE TABLE audit_log (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id     uuid        NOT NULL,
    actor      uuid,
    action     text        NOT NULL,
    table_name text        NOT NULL,
    record_id  text        NOT NULL,
    old_values jsonb,
    new_values jsonb,
    ip         inet,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_org_at_idx ON audit_log (org_id, at DESC);
CREATE INDEX audit_log_record_idx ON audit_log (org_id, table_name, record_id);
CREATE INDEX audit_log_actor_idx ON audit_log (org_id, actor, at DESC);
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON audit_log
    USING (org_id = current_setting('app.org_id')::uuid)
    WITH CHECK (org_id = current_setting('app.org_id')::uuid);

CREATE FUNCTION audit_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log (org_id, actor, action, table_name, record_id, old_values, new_values, ip)
    VALUES (coalesce(NEW.org_id, OLD.org_id),
            nullif(current_setting('app.user_id', true), '')::uuid,
            TG_OP, TG_TABLE_NAME, coalesce(NEW.id, OLD.id)::text,
            CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END,
            inet_client_addr());
    RETURN NULL;
END
$$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON notes_audited
    FOR EACH ROW EXECUTE FUNCTION audit_trigger();

INSERT INTO notes_audited SELECT * FROM notes;

GRANT USAGE ON SCHEMA public TO bench_app, bench_norls;
GRANT SELECT, INSERT ON notes_audited, audit_log TO bench_app, bench_norls;
GRANT SELECT ON members TO bench_app, bench_norls;
GRANT SELECT, INSERT ON notes TO bench_app, bench_norls;
GRANT SELECT ON bench_orgs, bench_users, bench_notes TO bench_app, bench_norls;

-- Sanity checks: the data is what the scripts assume.
DO $$
DECLARE
    n_notes bigint;
    n_orgs bigint;
    bad bigint;
BEGIN
    SELECT count(*), count(DISTINCT org_id) INTO n_notes, n_orgs FROM notes;
    IF n_notes <> 100000 OR n_orgs <> 100 THEN
        RAISE EXCEPTION 'expected 100000 notes in 100 orgs, got % in %', n_notes, n_orgs;
    END IF;
    SELECT count(*) INTO bad FROM notes
     WHERE length(title) <> 40 OR length(body) <> 500;
    IF bad <> 0 THEN
        RAISE EXCEPTION '% notes have an unexpected title/body length', bad;
    END IF;
    SELECT count(*) INTO bad FROM bench_notes b
     WHERE NOT EXISTS (SELECT 1 FROM notes n WHERE n.org_id = b.org_id AND n.id = b.id);
    IF bad <> 0 THEN
        RAISE EXCEPTION '% lookup rows name no note', bad;
    END IF;
END
$$;

VACUUM (ANALYZE) notes;
VACUUM (ANALYZE) notes_audited;
VACUUM (ANALYZE) members;
VACUUM (ANALYZE) audit_log;
VACUUM (ANALYZE) bench_orgs;
VACUUM (ANALYZE) bench_users;
VACUUM (ANALYZE) bench_notes;
CHECKPOINT;
