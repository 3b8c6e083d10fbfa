-- The audit trail (SPEC R11–R13): every write to every tenant and identity table recorded in
-- the same transaction, sealed into a per-organization hash chain by the server's sealer, with
-- signed checkpoints kept outside the database (docs/audit.md); the HTTP access log and the
-- read-access log of PHI tables, partitioned by month with retention by dropping partitions.

-- The request context now also carries who and from where (API key, client address, request id,
-- user agent) as orgbase.req, covered by the context MAC so the audit trail can trust it.
CREATE FUNCTION orgbase.ctx_mac(org text, usr text, org_role text, app_roles text, req text)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    k record;
BEGIN
    SELECT inner_key, outer_key INTO k FROM orgbase.context_key WHERE id = 1;
    RETURN encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
               concat_ws('|', org, usr, org_role, app_roles, req, pg_backend_pid()::text,
                         extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex');
END
$$;
REVOKE ALL ON FUNCTION orgbase.ctx_mac(text, text, text, text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION orgbase.ctx(OUT org_id uuid, OUT user_id uuid, OUT org_role text, OUT app_roles text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    o text := current_setting('orgbase.org_id', true);
    u text := current_setting('orgbase.user_id', true);
    r text := current_setting('orgbase.org_role', true);
    a text := current_setting('orgbase.app_roles', true);
    q text := current_setting('orgbase.req', true);
    m text := current_setting('orgbase.ctx_mac', true);
    k record;
BEGIN
    IF coalesce(o, '') = '' OR coalesce(m, '') = '' THEN
        RAISE EXCEPTION 'no tenant context in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_no_context';
    END IF;
    SELECT inner_key, outer_key INTO k FROM orgbase.context_key WHERE id = 1;
    IF m IS DISTINCT FROM encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
               concat_ws('|', o, u, r, a, q, pg_backend_pid()::text,
                         extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex') THEN
        RAISE EXCEPTION 'invalid tenant context'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_context';
    END IF;
    org_id := o::uuid;
    user_id := u::uuid;
    org_role := r;
    app_roles := a;
END
$$;

DROP FUNCTION orgbase.begin_request(bytea, text, inet);
CREATE FUNCTION orgbase.begin_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL,
                                      request_id text DEFAULT NULL, user_agent text DEFAULT NULL)
RETURNS TABLE (org_id uuid, user_id uuid, org_role text, app_roles text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid;
    sid uuid;
    seen timestamptz;
    mfa boolean;
    k record;
    o uuid;
    r text;
    a text;
    need_mfa boolean;
    target uuid;
    key_id uuid;
    req text;
BEGIN
    IF coalesce(current_setting('orgbase.ctx_mac', true), '') <> '' THEN
        RAISE EXCEPTION 'the tenant context is already set in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_context_twice';
    END IF;
    SELECT se.id, se.user_id, se.last_seen_at, se.mfa_passed INTO sid, uid, seen, mfa
      FROM orgbase.sessions se JOIN orgbase.users us ON us.id = se.user_id
     WHERE se.token_hash = cred_hash
       AND se.revoked_at IS NULL
       AND se.expires_at > now()
       AND se.last_seen_at + se.idle_timeout > now()
       AND us.status = 'active' AND us.deleted_at IS NULL;
    IF FOUND THEN
        IF seen < now() - interval '60 seconds' THEN
            UPDATE orgbase.sessions SET last_seen_at = now() WHERE id = sid;
        END IF;
        IF org_ref ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            target := org_ref::uuid;
        ELSE
            SELECT og.id INTO target FROM orgbase.organizations og WHERE og.slug = org_ref;
        END IF;
        SELECT m.org_id, m.role, coalesce((og.settings ->> 'require_mfa')::boolean, false)
          INTO o, r, need_mfa
          FROM orgbase.members m JOIN orgbase.organizations og ON og.id = m.org_id
         WHERE m.org_id = target AND m.user_id = uid AND m.deleted_at IS NULL AND og.deleted_at IS NULL;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no such organization, or not a member'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_not_member';
        END IF;
        IF need_mfa AND NOT mfa THEN
            RAISE EXCEPTION 'this organization requires multi-factor authentication'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_mfa_required';
        END IF;
        a := orgbase.member_app_roles(o, uid);
    ELSE
        SELECT ak.id, ak.org_id, ak.user_id, ak.scopes, ak.ip_allow, ak.last_used_at, m.role,
               ak.org_id IS NOT DISTINCT FROM orgbase.org_of_ref(org_ref) AS org_matches
          INTO k
          FROM orgbase.api_keys ak
          JOIN orgbase.organizations og ON og.id = ak.org_id
          JOIN orgbase.members m ON m.org_id = ak.org_id AND m.user_id = ak.user_id
          JOIN orgbase.users us ON us.id = ak.user_id
         WHERE ak.key_hash = cred_hash
           AND ak.revoked_at IS NULL
           AND (ak.expires_at IS NULL OR ak.expires_at > now())
           AND m.deleted_at IS NULL AND og.deleted_at IS NULL
           AND us.status = 'active' AND us.deleted_at IS NULL;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'invalid or expired credential'
                USING ERRCODE = 'invalid_authorization_specification', HINT = 'orgbase_unauthenticated';
        END IF;
        IF NOT k.org_matches THEN
            RAISE EXCEPTION 'no such organization, or not a member'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_not_member';
        END IF;
        IF cardinality(k.ip_allow) > 0
           AND (client_ip IS NULL OR NOT client_ip <<= ANY (k.ip_allow)) THEN
            RAISE EXCEPTION 'this API key may not be used from this address'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_ip_not_allowed';
        END IF;
        IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '60 seconds' THEN
            UPDATE orgbase.api_keys SET last_used_at = now() WHERE api_keys.id = k.id AND api_keys.org_id = k.org_id;
        END IF;
        o := k.org_id;
        key_id := k.id;
        uid := k.user_id;
        -- A key acts as its creator, narrowed by its scopes.
        r := CASE WHEN 'admin' = ANY (k.scopes) THEN k.role
                  WHEN k.role = 'owner' OR k.role = 'admin' THEN 'member'
                  ELSE k.role END;
        SELECT coalesce(string_agg(app || '=' || (ARRAY['viewer', 'editor', 'admin'])[lvl], ',' ORDER BY app), '')
          INTO a
          FROM (SELECT apps.app,
                       least(CASE WHEN k.role IN ('owner', 'admin') THEN 3
                                  ELSE coalesce(array_position(ARRAY['viewer', 'editor', 'admin'],
                                       split_part((SELECT x FROM unnest(string_to_array(orgbase.member_app_roles(o, uid), ',')) x
                                                    WHERE split_part(x, '=', 1) = apps.app), '=', 2)), 0) END,
                             (SELECT max(CASE split_part(s, ':', 2) WHEN 'read' THEN 1 WHEN 'write' THEN 2 WHEN 'admin' THEN 3 END)
                                FROM unnest(k.scopes) s
                               WHERE split_part(s, ':', 1) IN (apps.app, '*'))) AS lvl
                  FROM (SELECT DISTINCT t.app FROM orgbase.tenant_tables t
                        UNION SELECT p.app FROM orgbase.app_permissions p WHERE p.org_id = o) apps) g
         WHERE lvl > 0;
    END IF;
    -- Who and from where, for the audit trail: covered by the same MAC.
    req := jsonb_build_object('key', key_id, 'ip', client_ip, 'rid', left(request_id, 64),
                              'ua', left(user_agent, 256))::text;
    PERFORM set_config('orgbase.org_id', o::text, true),
            set_config('orgbase.user_id', uid::text, true),
            set_config('orgbase.org_role', r, true),
            set_config('orgbase.app_roles', a, true),
            set_config('orgbase.req', req, true),
            set_config('orgbase.ctx_mac', orgbase.ctx_mac(o::text, uid::text, r, a, req), true);
    org_id := o;
    user_id := uid;
    org_role := r;
    app_roles := a;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.begin_request(bytea, text, inet, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.begin_request(bytea, text, inet, text, text) TO orgbase_runtime;

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
GRANT SELECT ON orgbase.audit_log, orgbase.audit_heads TO orgbase_readonly, orgbase_backup;
-- (The schema's default privileges would give the runtime role DML on new tables.)
REVOKE INSERT, UPDATE, DELETE ON orgbase.audit_log, orgbase.audit_heads FROM orgbase_runtime;

-- Append-only: sealing fills the seal columns once; nothing else changes or removes an entry.
-- (The runtime role has no INSERT, UPDATE or DELETE grant at all: entries are written by the
-- SECURITY DEFINER trigger below.) Column-list triggers with a WHEN clause keep the sealer's
-- own updates free of a plpgsql call per row.
CREATE FUNCTION orgbase.audit_guard() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
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
GRANT SELECT ON orgbase.audit_log TO orgbase_runtime;
ALTER TABLE orgbase.audit_heads ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_head_read ON orgbase.audit_heads FOR SELECT
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
GRANT SELECT ON orgbase.audit_heads TO orgbase_runtime;

-- Capture: an AFTER row trigger on every audited table. Arguments:
--   0  the column holding the organization ('' → the account chain)
--   1  the columns that identify the row, comma-separated (joined with '/')
--   2  columns never copied into the log (secrets), comma-separated
--   3  columns whose change alone is not worth an entry (last_used_at), comma-separated
-- The actor comes from the verified request context; without one (maintenance by the
-- administrator, the account functions) the actor is 'system' and db_role says who.
CREATE FUNCTION orgbase.audit_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    hide text[] := CASE WHEN TG_NARGS > 2 AND TG_ARGV[2] <> '' THEN string_to_array(TG_ARGV[2], ',') ELSE '{}' END;
    quiet text[] := CASE WHEN TG_NARGS > 3 AND TG_ARGV[3] <> '' THEN string_to_array(TG_ARGV[3], ',') ELSE '{}' END;
    o jsonb;
    n jsonb;
    j jsonb;
    act text := lower(TG_OP);
    uid uuid;
    q jsonb;
    rid text;
BEGIN
    IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD) - hide; END IF;
    IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW) - hide; END IF;
    IF TG_OP = 'UPDATE' THEN
        IF (o - quiet) = (n - quiet) THEN
            RETURN NULL;
        END IF;
        IF o ->> 'deleted_at' IS NULL AND n ->> 'deleted_at' IS NOT NULL THEN
            act := 'soft_delete';
        ELSIF o ->> 'deleted_at' IS NOT NULL AND n ->> 'deleted_at' IS NULL THEN
            act := 'restore';
        END IF;
    END IF;
    j := coalesce(n, o);
    SELECT string_agg(j ->> col, '/' ORDER BY i) INTO rid
      FROM unnest(string_to_array(TG_ARGV[1], ',')) WITH ORDINALITY AS x (col, i);
    IF coalesce(current_setting('orgbase.ctx_mac', true), '') <> '' THEN
        uid := (orgbase.ctx()).user_id;
        q := current_setting('orgbase.req', true)::jsonb;
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

-- Identity tables.
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.users
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('', 'id', 'password_hash,totp_secret');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.organizations
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('id', 'id');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.members
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'user_id');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.app_permissions
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'user_id,app');
CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON orgbase.invitations
    FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row('org_id', 'id', 'token_hash');
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

-- Tenant tables: those registered so far, and every later one through make_tenant_table.
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT table_name FROM orgbase.tenant_tables ORDER BY table_name::text LOOP
        EXECUTE format('CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON %s
                        FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row(''org_id'', ''id'')', t);
    END LOOP;
END
$$;

-- Identity events ----------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION orgbase.create_session(
    id uuid, user_id uuid, token_hash bytea, refresh_hash bytea, ip inet, user_agent text,
    mfa_passed boolean, idle_timeout interval, lifetime interval, issued_at bigint, proof bytea)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    exp timestamptz := now() + lifetime;
BEGIN
    PERFORM orgbase.require_proof('session',
        concat_ws('|', create_session.user_id::text, encode(create_session.token_hash, 'hex'),
                  encode(create_session.refresh_hash, 'hex'), create_session.mfa_passed::text),
        issued_at, proof);
    INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, ip, user_agent,
                                  mfa_passed, idle_timeout, expires_at)
    VALUES (create_session.id, create_session.user_id, create_session.token_hash,
            create_session.refresh_hash, ip, left(user_agent, 512), create_session.mfa_passed,
            create_session.idle_timeout, exp);
    PERFORM orgbase.audit_event(create_session.user_id, 'login.success',
        jsonb_build_object('session_id', create_session.id, 'mfa', create_session.mfa_passed),
        ip, user_agent);
    RETURN exp;
END
$$;

CREATE OR REPLACE FUNCTION orgbase.refresh_session(refresh_hash bytea, new_id uuid, new_token_hash bytea,
                                        new_refresh_hash bytea, ip inet, user_agent text)
RETURNS TABLE (expires_at timestamptz, user_id uuid, mfa_passed boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    UPDATE orgbase.sessions se SET revoked_at = now()
      FROM orgbase.users us
     WHERE us.id = se.user_id
       AND se.refresh_hash = refresh_session.refresh_hash
       AND se.revoked_at IS NULL AND se.expires_at > now()
       AND us.status = 'active' AND us.deleted_at IS NULL
    RETURNING se.user_id, se.mfa_passed, se.idle_timeout, se.expires_at INTO s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'invalid or expired refresh token'
            USING ERRCODE = 'invalid_authorization_specification', HINT = 'orgbase_unauthenticated';
    END IF;
    INSERT INTO orgbase.sessions (id, user_id, token_hash, refresh_hash, ip, user_agent,
                                  mfa_passed, idle_timeout, expires_at)
    VALUES (new_id, s.user_id, new_token_hash, new_refresh_hash, ip, left(user_agent, 512),
            s.mfa_passed, s.idle_timeout, s.expires_at);
    PERFORM orgbase.audit_event(s.user_id, 'session.refresh',
        jsonb_build_object('session_id', new_id), ip, user_agent);
    expires_at := s.expires_at;
    user_id := s.user_id;
    mfa_passed := s.mfa_passed;
    RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION orgbase.logout(token_hash bytea) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    usr uuid;
    sid uuid;
BEGIN
    UPDATE orgbase.sessions SET revoked_at = now()
     WHERE sessions.token_hash = logout.token_hash AND revoked_at IS NULL
    RETURNING user_id, id INTO usr, sid;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM orgbase.audit_event(usr, 'logout', jsonb_build_object('session_id', sid), NULL, NULL);
    RETURN true;
END
$$;

CREATE OR REPLACE FUNCTION orgbase.totp_enroll(token_hash bytea, secret bytea) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid := (SELECT s.user_id FROM orgbase.session_of(token_hash) s);
    em text;
BEGIN
    UPDATE orgbase.users SET totp_secret = secret, updated_at = now()
     WHERE id = uid AND NOT totp_enabled
    RETURNING email INTO em;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'multi-factor authentication is already enabled'
            USING ERRCODE = 'unique_violation', HINT = 'orgbase_mfa_enabled';
    END IF;
    PERFORM orgbase.audit_event(uid, 'mfa.enroll', '{}', NULL, NULL);
    RETURN em;
END
$$;

CREATE OR REPLACE FUNCTION orgbase.totp_confirm(token_hash bytea, issued_at bigint, proof bytea) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    s record;
BEGIN
    PERFORM orgbase.require_proof('totp-ok', encode(token_hash, 'hex'), issued_at, proof);
    SELECT * INTO s FROM orgbase.session_of(token_hash);
    UPDATE orgbase.users SET totp_enabled = true, updated_at = now() WHERE id = s.user_id;
    UPDATE orgbase.sessions SET mfa_passed = true WHERE id = s.session_id;
    PERFORM orgbase.audit_event(s.user_id, 'mfa.verify', jsonb_build_object('session_id', s.session_id), NULL, NULL);
END
$$;

-- A failed login: the server calls this after checking a password (or finding no such user),
-- with a proof, so SQL run as the runtime role cannot fill the log with invented failures.
CREATE FUNCTION orgbase.login_failed(email text, ip inet, user_agent text, issued_at bigint, proof bytea)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    PERFORM orgbase.require_proof('login-failed', login_failed.email, issued_at, proof);
    PERFORM orgbase.audit_event(
        (SELECT u.id FROM orgbase.users u WHERE u.email = login_failed.email),
        'login.failure', jsonb_build_object('email', login_failed.email), ip, user_agent);
END
$$;
REVOKE ALL ON FUNCTION orgbase.login_failed(text, inet, text, bigint, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.login_failed(text, inet, text, bigint, bytea) TO orgbase_runtime;

-- The tenant-table helper now also attaches the audit trigger (R6).
CREATE OR REPLACE FUNCTION orgbase.make_tenant_table(tbl regclass, app text, citus boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    t text := tbl::text;
    n text := (SELECT c.relname FROM pg_class c WHERE c.oid = tbl);
BEGIN
    EXECUTE format($f$
        ALTER TABLE %1$s
            ADD COLUMN IF NOT EXISTS org_id uuid NOT NULL,
            ADD COLUMN IF NOT EXISTS id uuid NOT NULL DEFAULT gen_random_uuid(),
            ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN IF NOT EXISTS deleted_at timestamptz,
            ADD COLUMN IF NOT EXISTS created_by uuid NOT NULL,
            ADD COLUMN IF NOT EXISTS updated_by uuid NOT NULL
    $f$, t);
    -- Separately: ADD COLUMN would evaluate these defaults once, outside any context.
    EXECUTE format($f$
        ALTER TABLE %1$s
            ALTER COLUMN org_id SET DEFAULT orgbase.ctx_org(),
            ALTER COLUMN created_by SET DEFAULT orgbase.ctx_user(),
            ALTER COLUMN updated_by SET DEFAULT orgbase.ctx_user()
    $f$, t);
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = tbl AND contype = 'p') THEN
        EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (org_id, id)', t);
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
    PERFORM orgbase.tenant_policies(tbl, app, citus);
    EXECUTE format('CREATE INDEX %I ON %s (org_id, created_at DESC, id DESC) WHERE deleted_at IS NULL', n || '_recent_idx', t);
    EXECUTE format('CREATE TRIGGER touch_row BEFORE UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION orgbase.touch_row()', t);
    EXECUTE format('CREATE TRIGGER audit_row AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION orgbase.audit_row(''org_id'', ''id'')', t);
    INSERT INTO orgbase.tenant_tables (table_name, app) VALUES (tbl, app);
END
$$;

-- Column classification (R14) ----------------------------------------------------------------

-- public, internal, confidential, pii, phi; unlisted columns are internal. Reads of a table with
-- a phi column are logged in read_access_log.
CREATE TABLE orgbase.column_classes (
    table_name regclass NOT NULL REFERENCES orgbase.tenant_tables (table_name) ON DELETE CASCADE,
    column_name name NOT NULL,
    class text NOT NULL CHECK (class IN ('public', 'internal', 'confidential', 'pii', 'phi')),
    PRIMARY KEY (table_name, column_name)
);
REVOKE INSERT, UPDATE, DELETE ON orgbase.column_classes FROM orgbase_runtime;
GRANT SELECT ON orgbase.column_classes TO orgbase_runtime, orgbase_readonly, orgbase_backup;

--     SELECT orgbase.classify('myschema.patients', 'diagnosis', 'phi');
CREATE FUNCTION orgbase.classify(tbl regclass, col name, class text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute a
                    WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'table % has no column %', tbl, col;
    END IF;
    INSERT INTO orgbase.column_classes (table_name, column_name, class) VALUES (tbl, col, class)
    ON CONFLICT (table_name, column_name) DO UPDATE SET class = EXCLUDED.class;
END
$$;
REVOKE ALL ON FUNCTION orgbase.classify(regclass, name, text) FROM PUBLIC;

SELECT orgbase.classify('orgbase.notes', 'title', 'confidential');
SELECT orgbase.classify('orgbase.notes', 'body', 'confidential');
SELECT orgbase.classify('orgbase.attachments', 'filename', 'confidential');
SELECT orgbase.classify('orgbase.tasks', 'description', 'confidential');

-- Access logs (R13) --------------------------------------------------------------------------

-- Partitioned by retention class (HIPAA organizations: 6 years; others: 1 year), then by month;
-- retention drops whole monthly partitions (orgbase.maintain_logs).
CREATE TABLE orgbase.access_log (
    at timestamptz NOT NULL,
    hipaa boolean NOT NULL,
    org_id uuid,
    user_id uuid,
    method text NOT NULL,
    route text NOT NULL,
    status smallint NOT NULL,
    latency_ms real NOT NULL,
    request_id text,
    ip inet
) PARTITION BY LIST (hipaa);
CREATE TABLE orgbase.access_log_std PARTITION OF orgbase.access_log FOR VALUES IN (false)
    PARTITION BY RANGE (at);
CREATE TABLE orgbase.access_log_hipaa PARTITION OF orgbase.access_log FOR VALUES IN (true)
    PARTITION BY RANGE (at);

CREATE TABLE orgbase.read_access_log (
    at timestamptz NOT NULL DEFAULT now(),
    hipaa boolean NOT NULL,
    org_id uuid NOT NULL,
    user_id uuid NOT NULL,
    actor_key uuid,
    table_name text NOT NULL,
    record_ids uuid[] NOT NULL,
    request_id text,
    ip inet
) PARTITION BY LIST (hipaa);
CREATE TABLE orgbase.read_access_log_std PARTITION OF orgbase.read_access_log FOR VALUES IN (false)
    PARTITION BY RANGE (at);
CREATE TABLE orgbase.read_access_log_hipaa PARTITION OF orgbase.read_access_log FOR VALUES IN (true)
    PARTITION BY RANGE (at);
-- Written only through log_access / log_read; not readable by the runtime role.
REVOKE ALL ON orgbase.access_log, orgbase.access_log_std, orgbase.access_log_hipaa,
              orgbase.read_access_log, orgbase.read_access_log_std, orgbase.read_access_log_hipaa
    FROM orgbase_runtime;
GRANT SELECT ON orgbase.access_log, orgbase.read_access_log TO orgbase_readonly, orgbase_backup;

-- Monthly partitions from last month to two months ahead; partitions whose month ended before
-- the retention period are dropped. Returns one line per partition created or dropped.
CREATE FUNCTION orgbase.maintain_logs(at timestamptz DEFAULT now(), std_months int DEFAULT 12,
                                      hipaa_months int DEFAULT 72)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    base text;
    class text;
    m date;
    keep int;
    p record;
BEGIN
    FOREACH base IN ARRAY ARRAY['access_log', 'read_access_log'] LOOP
        FOREACH class IN ARRAY ARRAY['std', 'hipaa'] LOOP
            FOR i IN -1..2 LOOP
                m := (date_trunc('month', at AT TIME ZONE 'UTC') + make_interval(months => i))::date;
                IF to_regclass(format('orgbase.%s_%s_%s', base, class, to_char(m, 'YYYYMM'))) IS NULL THEN
                    EXECUTE format('CREATE TABLE orgbase.%I PARTITION OF orgbase.%I FOR VALUES FROM (%L) TO (%L)',
                                   format('%s_%s_%s', base, class, to_char(m, 'YYYYMM')),
                                   base || '_' || class,
                                   (m::timestamp AT TIME ZONE 'UTC'),
                                   ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
                    EXECUTE format('REVOKE ALL ON orgbase.%I FROM orgbase_runtime',
                                   format('%s_%s_%s', base, class, to_char(m, 'YYYYMM')));
                    RETURN NEXT format('created orgbase.%s_%s_%s', base, class, to_char(m, 'YYYYMM'));
                END IF;
            END LOOP;
            keep := CASE class WHEN 'std' THEN std_months ELSE hipaa_months END;
            FOR p IN
                SELECT c.relname
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = format('orgbase.%s_%s', base, class)::regclass
                   AND c.relname ~ '_[0-9]{6}$'
                   AND (to_date(right(c.relname, 6), 'YYYYMM') + interval '1 month')
                       <= date_trunc('month', at AT TIME ZONE 'UTC') - make_interval(months => keep)
                 ORDER BY c.relname
            LOOP
                EXECUTE format('DROP TABLE orgbase.%I', p.relname);
                RETURN NEXT format('dropped orgbase.%s', p.relname);
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION orgbase.maintain_logs(timestamptz, int, int) FROM PUBLIC;
SELECT count(*) FROM orgbase.maintain_logs();

-- The server's access-log writer: a batch of requests; the retention class comes from the
-- organization's compliance flags. Rows for months without a partition are an error (the server
-- runs maintain_logs at start and daily).
CREATE FUNCTION orgbase.log_access(at timestamptz[], org_id uuid[], user_id uuid[], method text[],
                                   route text[], status smallint[], latency_ms real[],
                                   request_id text[], ip inet[])
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    INSERT INTO orgbase.access_log (at, hipaa, org_id, user_id, method, route, status, latency_ms,
                                    request_id, ip)
    SELECT r.at, coalesce('hipaa' = ANY (o.compliance), false), r.org_id, r.user_id, r.method,
           left(r.route, 200), r.status, r.latency_ms, left(r.request_id, 64), r.ip
      FROM unnest(at, org_id, user_id, method, route, status, latency_ms, request_id, ip)
           AS r (at, org_id, user_id, method, route, status, latency_ms, request_id, ip)
      LEFT JOIN orgbase.organizations o ON o.id = r.org_id
$$;
REVOKE ALL ON FUNCTION orgbase.log_access(timestamptz[], uuid[], uuid[], text[], text[], smallint[], real[], text[], inet[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.log_access(timestamptz[], uuid[], uuid[], text[], text[], smallint[], real[], text[], inet[]) TO orgbase_runtime;

-- In a request: record that the caller read these rows of a PHI table (same transaction as the
-- read, so a read that is answered is a read that is logged).
CREATE FUNCTION orgbase.log_read(tbl text, ids uuid[]) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
    q jsonb := current_setting('orgbase.req', true)::jsonb;
BEGIN
    INSERT INTO orgbase.read_access_log (hipaa, org_id, user_id, actor_key, table_name, record_ids,
                                         request_id, ip)
    SELECT coalesce('hipaa' = ANY (o.compliance), false), c.org_id, c.user_id,
           (q ->> 'key')::uuid, tbl, ids, q ->> 'rid', (q ->> 'ip')::inet
      FROM orgbase.organizations o WHERE o.id = c.org_id;
END
$$;
REVOKE ALL ON FUNCTION orgbase.log_read(text, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.log_read(text, uuid[]) TO orgbase_runtime;
