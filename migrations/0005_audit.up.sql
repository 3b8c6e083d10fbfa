-- The audit trail: every write to every identity and tenant table recorded in the same
-- transaction as the write, sealed into a per-organization hash chain by the server's sealer,
-- with signed checkpoints of the chain heads kept outside the database (docs/audit.md).
--
-- Capture is an AFTER row trigger, orgbase.audit_row, so that a write and its entry commit
-- together or not at all. Its actor comes from the verified tenant context (the trigger checks
-- the context MAC itself), so SQL run as the runtime role cannot put its writes under another
-- name. The log is append-only: the runtime role may only read its organization's entries
-- (owners and admins, under RLS); guard triggers refuse every change except the sealer's
-- one-time filling of the chain columns and the redaction of personal values on erasure, even
-- for the owner. Tenant tables get the trigger from orgbase.make_tenant_table; the identity
-- tables get it here; later tables (GDPR requests, consents, retention, holds) where they are
-- created.

-- The audit log ------------------------------------------------------------------------------

-- One row per write or identity event. Rows arrive unsealed (seq, prev_hash, hash NULL); the
-- server's sealer chains them per organization in commit order. Account-level events (sign-up,
-- login, sessions) go to the chain of the nil organization 00000000-0000-0000-0000-000000000000.
-- The chain hash covers values_digest, a digest of old and new, not the values themselves, so
-- that personal values can later be redacted without breaking the chain (docs/audit.md).
CREATE TABLE orgbase.audit_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    org_id uuid NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    actor_kind text NOT NULL CHECK (actor_kind IN ('user', 'api_key', 'system')),
    actor_user uuid,
    actor_key uuid,
    db_role text NOT NULL DEFAULT session_user,
    action text NOT NULL,
    table_name text,
    record_id text,
    old jsonb,
    new jsonb,
    ip inet,
    user_agent text,
    request_id text,
    seq bigint,
    prev_hash bytea,
    hash bytea,
    values_digest bytea,
    sealed_at timestamptz,
    redacted_at timestamptz
);
CREATE INDEX audit_log_org_idx ON orgbase.audit_log (org_id, id);
CREATE INDEX audit_log_record_idx ON orgbase.audit_log (org_id, table_name, record_id);
CREATE INDEX audit_log_unsealed_idx ON orgbase.audit_log (id) WHERE seq IS NULL;

-- The head of each organization's chain, kept by the sealer; checkpointed_seq is the last head
-- written to a signed checkpoint.
CREATE TABLE orgbase.audit_heads (
    org_id uuid PRIMARY KEY,
    seq bigint NOT NULL,
    hash bytea NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT now(),
    checkpointed_seq bigint NOT NULL DEFAULT 0
);
-- The schema's default privileges would give the runtime role DML on new tables: it keeps
-- SELECT only (under RLS, below).
REVOKE INSERT, UPDATE, DELETE ON orgbase.audit_log, orgbase.audit_heads FROM orgbase_runtime;

-- Append-only: sealing fills the seal columns once; nothing else changes or removes an entry,
-- except redaction on erasure: `old` and `new` become NULL and `redacted_at` is set, while
-- everything the chain covers (including `values_digest`, the digest of the values) stays, so
-- the chain still verifies. Column-list triggers with a WHEN clause keep the sealer's own updates
-- free of a plpgsql call per row.
CREATE FUNCTION orgbase.audit_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_NAME = 'audit_guard'
       AND OLD.redacted_at IS NULL AND NEW.redacted_at IS NOT NULL
       AND OLD.values_digest IS NOT NULL AND NEW.old IS NULL AND NEW.new IS NULL
       AND (NEW.id, NEW.org_id, NEW.at, NEW.actor_kind, NEW.actor_user, NEW.actor_key, NEW.db_role,
            NEW.action, NEW.table_name, NEW.record_id, NEW.ip, NEW.user_agent, NEW.request_id)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.org_id, OLD.at, OLD.actor_kind, OLD.actor_user, OLD.actor_key, OLD.db_role,
            OLD.action, OLD.table_name, OLD.record_id, OLD.ip, OLD.user_agent, OLD.request_id) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the audit log is append-only'
        USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_audit_append_only';
END
$$;
CREATE TRIGGER audit_guard
    BEFORE UPDATE OF id, org_id, at, actor_kind, actor_user, actor_key, db_role, action, table_name,
                     record_id, old, new, ip, user_agent, request_id, redacted_at
    OR DELETE ON orgbase.audit_log
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_guard();
CREATE TRIGGER audit_guard_seal
    BEFORE UPDATE OF seq, prev_hash, hash, values_digest, sealed_at ON orgbase.audit_log
    FOR EACH ROW WHEN (OLD.seq IS NOT NULL) EXECUTE FUNCTION orgbase.audit_guard();
CREATE TRIGGER audit_guard_truncate BEFORE TRUNCATE ON orgbase.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION orgbase.audit_guard();

-- Organization admins read their organization's entries through the API.
ALTER TABLE orgbase.audit_log ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_read ON orgbase.audit_log FOR SELECT
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
ALTER TABLE orgbase.audit_heads ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_head_read ON orgbase.audit_heads FOR SELECT
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));

-- Capture ----------------------------------------------------------------------------------------

-- An AFTER row trigger on every audited table. Arguments:
--   0  the column holding the organization ('' → the account chain)
--   1  the columns that identify the row, comma-separated (joined with '/')
--   2  columns never copied into the log (secrets, blind indexes), comma-separated
--   3  columns whose change alone is not worth an entry (last_used_at), comma-separated
-- The actor comes from the verified request context, whose MAC the trigger checks itself (a
-- forged context raises orgbase_bad_context); without one (maintenance by the administrator, the
-- account functions) the actor is 'system' and db_role says who. The row is rendered as JSON once,
-- and the record id read without a query when it is one column (the common case).
CREATE FUNCTION orgbase.audit_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    hide text[];
    quiet text[];
    o jsonb;
    n jsonb;
    j jsonb;
    act text := lower(TG_OP);
    uid uuid;
    m text := current_setting('orgbase.ctx_mac', true);
    k bytea;
    qt text;
    q jsonb;
    rid text;
BEGIN
    IF TG_NARGS > 2 THEN
        hide := CASE WHEN TG_ARGV[2] <> '' THEN string_to_array(TG_ARGV[2], ',') END;
        quiet := CASE WHEN TG_NARGS > 3 AND TG_ARGV[3] <> '' THEN string_to_array(TG_ARGV[3], ',') END;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        o := to_jsonb(OLD);
        IF hide IS NOT NULL THEN o := o - hide; END IF;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        n := to_jsonb(NEW);
        IF hide IS NOT NULL THEN n := n - hide; END IF;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF coalesce(o - quiet, o) = coalesce(n - quiet, n) THEN
            RETURN NULL;
        END IF;
        IF o ->> 'deleted_at' IS NULL AND n ->> 'deleted_at' IS NOT NULL THEN
            act := 'soft_delete';
        ELSIF o ->> 'deleted_at' IS NOT NULL AND n ->> 'deleted_at' IS NULL THEN
            act := 'restore';
        END IF;
    END IF;
    j := coalesce(n, o);
    IF strpos(TG_ARGV[1], ',') = 0 THEN
        rid := j ->> TG_ARGV[1];
    ELSE
        SELECT string_agg(j ->> col, '/' ORDER BY i) INTO rid
          FROM unnest(string_to_array(TG_ARGV[1], ',')) WITH ORDINALITY AS x (col, i);
    END IF;
    IF coalesce(m, '') <> '' THEN
        -- The actor is only as good as the context: verify its MAC as orgbase.ctx() does.
        qt := current_setting('orgbase.req', true);
        k := orgbase.session_key();
        IF m IS DISTINCT FROM orgbase.session_mac(k, current_setting('orgbase.org_id', true),
                                                  current_setting('orgbase.user_id', true),
                                                  current_setting('orgbase.org_role', true),
                                                  current_setting('orgbase.app_roles', true), qt) THEN
            RAISE EXCEPTION 'invalid tenant context'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_context';
        END IF;
        uid := current_setting('orgbase.user_id', true)::uuid;
        q := qt::jsonb;
    END IF;
    INSERT INTO orgbase.audit_log (org_id, actor_kind, actor_user, actor_key, action, table_name,
                                   record_id, old, new, ip, user_agent, request_id)
    VALUES (CASE WHEN TG_ARGV[0] = '' THEN '00000000-0000-0000-0000-000000000000'::uuid
                 ELSE (j ->> TG_ARGV[0])::uuid END,
            CASE WHEN uid IS NULL THEN 'system'
                 WHEN q ->> 'key' IS NOT NULL THEN 'api_key' ELSE 'user' END,
            uid, (q ->> 'key')::uuid, act, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, rid,
            o, n, (q ->> 'ip')::inet, q ->> 'ua', q ->> 'rid');
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION orgbase.audit_row() FROM PUBLIC;

-- An account-level event written by orgbase's own functions (login, sessions, MFA).
CREATE FUNCTION orgbase.audit_event(usr uuid, action text, detail jsonb, ip inet, user_agent text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, orgbase
AS $$
    INSERT INTO orgbase.audit_log (org_id, actor_kind, actor_user, action, table_name, record_id,
                                   new, ip, user_agent)
    VALUES ('00000000-0000-0000-0000-000000000000', CASE WHEN usr IS NULL THEN 'system' ELSE 'user' END,
            usr, action, 'orgbase.users', usr::text, detail, ip, left(user_agent, 256))
$$;
REVOKE ALL ON FUNCTION orgbase.audit_event(uuid, text, jsonb, inet, text) FROM PUBLIC;

-- The identity tables. Secrets and blind indexes stay out of the log: an entry about an erased
-- person keeps no value that could confirm a guessed email. Sessions are not audited row by
-- row: the account functions write login, refresh and logout events.
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.users
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('', 'id', 'password_hash,totp_secret,email_hash');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.organizations
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('id', 'id');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.members
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'user_id');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.app_permissions
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'user_id,app');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.invitations
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id', 'token_hash,email_hash');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.teams
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.team_members
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'team_id,user_id');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.api_keys
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id', 'key_hash', 'last_used_at');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.roles
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.member_roles
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'user_id,role_id');
