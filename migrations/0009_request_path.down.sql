-- Back to the request path of migrations 0003 and 0005.

CREATE OR REPLACE FUNCTION orgbase.ctx_app_level(app text) RETURNS int
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
    r text;
BEGIN
    IF c.org_role IN ('owner', 'admin') THEN
        RETURN 3;
    END IF;
    SELECT split_part(x, '=', 2) INTO r
      FROM unnest(string_to_array(c.app_roles, ',')) x
     WHERE split_part(x, '=', 1) = app;
    RETURN CASE r WHEN 'admin' THEN 3 WHEN 'editor' THEN 2 WHEN 'viewer' THEN 1 ELSE 0 END;
END
$$;

CREATE OR REPLACE FUNCTION orgbase.tenant_policies(tbl regclass, app text, citus boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    o text := CASE WHEN citus THEN 'orgbase.ctx_org()' ELSE '(SELECT orgbase.ctx_org())' END;
    u text := CASE WHEN citus THEN 'orgbase.ctx_user()' ELSE '(SELECT orgbase.ctx_user())' END;
    l text := CASE WHEN citus THEN format('orgbase.ctx_app_level(%L)', app)
                   ELSE format('(SELECT orgbase.ctx_app_level(%L))', app) END;
    p text;
BEGIN
    FOREACH p IN ARRAY ARRAY['tenant_select', 'tenant_insert', 'tenant_update', 'tenant_delete'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS %I ON %s', p, tbl);
    END LOOP;
    -- The app level comes first: when it suffices, the caller's id is never computed.
    EXECUTE format('CREATE POLICY tenant_select ON %s FOR SELECT USING (org_id = %s AND (%s >= 1 OR created_by = %s))',
                   tbl, o, l, u);
    EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (org_id = %s AND %s >= 2 AND created_by = %s AND updated_by = %s)',
                   tbl, o, l, u, u);
    EXECUTE format('CREATE POLICY tenant_update ON %s FOR UPDATE USING (org_id = %s AND (%s >= 2 OR created_by = %s)) '
                   'WITH CHECK (org_id = %s AND (deleted_at IS NULL OR %s >= 3 OR created_by = %s))',
                   tbl, o, l, u, o, l, u);
    EXECUTE format('CREATE POLICY tenant_delete ON %s FOR DELETE USING (org_id = %s AND (%s >= 3 OR created_by = %s))',
                   tbl, o, l, u);
END
$$;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tt.table_name, tt.app,
               NOT EXISTS (SELECT 1 FROM pg_policy p
                            WHERE p.polrelid = tt.table_name AND p.polname = 'tenant_select'
                              AND pg_get_expr(p.polqual, p.polrelid) LIKE '%SELECT orgbase.ctx_org()%') AS citus
          FROM orgbase.tenant_tables tt
    LOOP
        PERFORM orgbase.tenant_policies(t.table_name, t.app, t.citus);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION orgbase.ctx_org() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx()).org_id $$;

CREATE OR REPLACE FUNCTION orgbase.ctx_user() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx()).user_id $$;

DROP FUNCTION orgbase.ctx_check(text);

CREATE OR REPLACE FUNCTION orgbase.begin_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL,
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

CREATE OR REPLACE FUNCTION orgbase.audit_row() RETURNS trigger
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

DROP FUNCTION orgbase.resume_request(bytea, text, inet, text, text, uuid, uuid, text, text, uuid, text);
DROP FUNCTION orgbase.open_request(bytea, text, inet, text, text);
DROP FUNCTION orgbase.ticket_mac(bytea, bytea, bytea, text, inet, uuid, uuid, text, text, uuid, text, text);
DROP TRIGGER identity_changed ON orgbase.sessions;
DROP TRIGGER identity_changed ON orgbase.users;
DROP TRIGGER identity_changed ON orgbase.organizations;
DROP TRIGGER identity_changed ON orgbase.members;
DROP TRIGGER identity_changed ON orgbase.app_permissions;
DROP TRIGGER identity_changed ON orgbase.member_roles;
DROP TRIGGER identity_changed ON orgbase.roles;
DROP TRIGGER identity_changed ON orgbase.api_keys;
DROP TRIGGER identity_changed ON orgbase.tenant_tables;
DROP FUNCTION orgbase.identity_changed();
DROP TABLE orgbase.identity_epoch;
