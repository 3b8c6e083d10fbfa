-- Back to migration 0004: no audit trail, access logs or column classes.
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT table_name FROM orgbase.tenant_tables LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS audit_row ON %s', t);
    END LOOP;
END
$$;
DROP TRIGGER audit_row ON orgbase.member_roles;
DROP TRIGGER audit_row ON orgbase.roles;
DROP TRIGGER audit_row ON orgbase.api_keys;
DROP TRIGGER audit_row ON orgbase.team_members;
DROP TRIGGER audit_row ON orgbase.teams;
DROP TRIGGER audit_row ON orgbase.invitations;
DROP TRIGGER audit_row ON orgbase.app_permissions;
DROP TRIGGER audit_row ON orgbase.members;
DROP TRIGGER audit_row ON orgbase.organizations;
DROP TRIGGER audit_row ON orgbase.users;

DROP FUNCTION orgbase.log_read(text, uuid[]);
DROP FUNCTION orgbase.log_access(timestamptz[], uuid[], uuid[], text[], text[], smallint[], real[], text[], inet[]);
DROP FUNCTION orgbase.maintain_logs(timestamptz, int, int);
DROP TABLE orgbase.read_access_log;
DROP TABLE orgbase.access_log;
DROP FUNCTION orgbase.classify(regclass, name, text);
DROP TABLE orgbase.column_classes;
DROP FUNCTION orgbase.login_failed(text, inet, text, bigint, bytea);

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
    INSERT INTO orgbase.tenant_tables (table_name, app) VALUES (tbl, app);
END
$$;

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
    expires_at := s.expires_at;
    user_id := s.user_id;
    mfa_passed := s.mfa_passed;
    RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION orgbase.logout(token_hash bytea) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    WITH r AS (UPDATE orgbase.sessions SET revoked_at = now()
                WHERE sessions.token_hash = logout.token_hash AND revoked_at IS NULL RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM r)
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
END
$$;

DROP FUNCTION orgbase.audit_event(uuid, text, jsonb, inet, text);
DROP FUNCTION orgbase.audit_row();
DROP TABLE orgbase.audit_heads;
DROP TABLE orgbase.audit_log;
DROP FUNCTION orgbase.audit_guard();

DROP FUNCTION orgbase.begin_request(bytea, text, inet, text, text);
CREATE OR REPLACE FUNCTION orgbase.begin_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL)
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
    PERFORM set_config('orgbase.org_id', o::text, true),
            set_config('orgbase.user_id', uid::text, true),
            set_config('orgbase.org_role', r, true),
            set_config('orgbase.app_roles', a, true),
            set_config('orgbase.ctx_mac', orgbase.ctx_mac(o::text, uid::text, r, a), true);
    org_id := o;
    user_id := uid;
    org_role := r;
    app_roles := a;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.begin_request(bytea, text, inet) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.begin_request(bytea, text, inet) TO orgbase_runtime;

CREATE OR REPLACE FUNCTION orgbase.ctx(OUT org_id uuid, OUT user_id uuid, OUT org_role text, OUT app_roles text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    o text := current_setting('orgbase.org_id', true);
    u text := current_setting('orgbase.user_id', true);
    r text := current_setting('orgbase.org_role', true);
    a text := current_setting('orgbase.app_roles', true);
    m text := current_setting('orgbase.ctx_mac', true);
    k record;
BEGIN
    IF coalesce(o, '') = '' OR coalesce(m, '') = '' THEN
        RAISE EXCEPTION 'no tenant context in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_no_context';
    END IF;
    SELECT inner_key, outer_key INTO k FROM orgbase.context_key WHERE id = 1;
    IF m IS DISTINCT FROM encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
               concat_ws('|', o, u, r, a, pg_backend_pid()::text,
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

DROP FUNCTION orgbase.ctx_mac(text, text, text, text, text);
