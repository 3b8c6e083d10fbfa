-- Back to the rights of migration 0013 (see 0014_rights_fail_closed.up.sql).

DROP TRIGGER tasks_assignee_active ON orgbase.tasks;
DROP FUNCTION orgbase.require_active_member();
DROP TRIGGER members_no_revival ON orgbase.members;
DROP FUNCTION orgbase.members_no_revival();
GRANT INSERT (org_id, user_id, role) ON orgbase.members TO orgbase_runtime;
CREATE POLICY member_insert ON orgbase.members FOR INSERT WITH CHECK (
    org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
    AND (role <> 'owner' OR (SELECT orgbase.ctx_org_role()) = 'owner'));

DROP POLICY api_key_read ON orgbase.api_keys;
DROP POLICY api_key_insert ON orgbase.api_keys;
DROP POLICY api_key_update ON orgbase.api_keys;
CREATE POLICY api_key_admin ON orgbase.api_keys FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
                AND user_id = (SELECT orgbase.ctx_user()));
DROP FUNCTION orgbase.ctx_may_grant(text[]);

-- Every tenant policy calls ctx_check or ctx_owner: they go while those are replaced. Which
-- tables have the Citus form (a select policy without a sub-select) is kept for the rebuild in a
-- setting of this transaction.
DO $$
DECLARE
    t record;
    p text;
BEGIN
    PERFORM set_config('orgbase.migration_citus_tables', coalesce((
        SELECT string_agg(tt.table_name::text, ',')
          FROM orgbase.tenant_tables tt
         WHERE NOT EXISTS (SELECT 1 FROM pg_policy p
                            WHERE p.polrelid = tt.table_name AND p.polname = 'tenant_select'
                              AND pg_get_expr(p.polqual, p.polrelid) LIKE '%SELECT %')), ''), true);
    FOR t IN SELECT tt.table_name FROM orgbase.tenant_tables tt LOOP
        FOREACH p IN ARRAY ARRAY['tenant_select', 'tenant_insert', 'tenant_update', 'tenant_delete'] LOOP
            EXECUTE format('DROP POLICY IF EXISTS %I ON %s', p, t.table_name);
        END LOOP;
    END LOOP;
END
$$;
DROP FUNCTION orgbase.ctx_owner(text, int);
DROP FUNCTION orgbase.ctx_check(text);
CREATE FUNCTION orgbase.ctx_check(app text, OUT org_id uuid, OUT user_id uuid, OUT level int)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    o text := current_setting('orgbase.org_id', true);
    u text := current_setting('orgbase.user_id', true);
    r text := current_setting('orgbase.org_role', true);
    a text := current_setting('orgbase.app_roles', true);
    m text := current_setting('orgbase.ctx_mac', true);
    k bytea;
BEGIN
    IF coalesce(o, '') = '' OR coalesce(m, '') = '' THEN
        RAISE EXCEPTION 'no tenant context in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_no_context';
    END IF;
    -- The key in a statement of its own: session_key() is volatile, and PostgreSQL does not
    -- inline a function (session_mac) given a volatile argument.
    k := orgbase.session_key();
    IF m IS DISTINCT FROM orgbase.session_mac(k, o, u, r, a, current_setting('orgbase.req', true)) THEN
        RAISE EXCEPTION 'invalid tenant context'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_context';
    END IF;
    org_id := o::uuid;
    user_id := u::uuid;
    -- app_roles is 'app=role,app=role': the text after ',app=' up to the next comma. An app
    -- that is not listed (or a NULL app) gives '' or NULL, level 0.
    level := CASE WHEN r IN ('owner', 'admin') THEN 3
                  ELSE CASE split_part(split_part(',' || a || ',', ',' || app || '=', 2), ',', 1)
                           WHEN 'admin' THEN 3 WHEN 'editor' THEN 2 WHEN 'viewer' THEN 1 ELSE 0 END
             END;
END
$$;
REVOKE ALL ON FUNCTION orgbase.ctx_check(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.ctx_check(text) TO orgbase_runtime, orgbase_readonly;

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
    IF citus THEN
        EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (org_id = %s AND %s >= 2 AND created_by = %s AND updated_by = %s)',
                       tbl, o, l, u, u);
    ELSE
        EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK ('
                       '(org_id, created_by, updated_by, true) = '
                       '(SELECT c.org_id, c.user_id, c.user_id, c.level >= 2 FROM orgbase.ctx_check(%L) c))',
                       tbl, app);
    END IF;
    EXECUTE format('CREATE POLICY tenant_update ON %s FOR UPDATE USING (org_id = %s AND (%s >= 2 OR created_by = %s)) '
                   'WITH CHECK (org_id = %s AND (deleted_at IS NULL OR %s >= 3 OR created_by = %s))',
                   tbl, o, l, u, o, l, u);
    EXECUTE format('CREATE POLICY tenant_delete ON %s FOR DELETE USING (org_id = %s AND (%s >= 3 OR created_by = %s))',
                   tbl, o, l, u);
END
$$;
REVOKE ALL ON FUNCTION orgbase.tenant_policies(regclass, text, boolean) FROM PUBLIC;

-- Re-create the policies of the registered tenant tables. Citus ones keep their form: their
-- select policy has no sub-select at all.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tt.table_name, tt.app,
               tt.table_name::text = ANY (string_to_array(current_setting('orgbase.migration_citus_tables'), ',')) AS citus
          FROM orgbase.tenant_tables tt
    LOOP
        PERFORM orgbase.tenant_policies(t.table_name, t.app, t.citus);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION orgbase.authenticate_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL,
                                                        request_id text DEFAULT NULL, user_agent text DEFAULT NULL)
RETURNS TABLE (org_id uuid, user_id uuid, org_role text, app_roles text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    ses record;
    k record;
    uid uuid;
    o uuid;
    r text;
    a text;
    key_id uuid;
    req text;
    target uuid;
BEGIN
    IF coalesce(current_setting('orgbase.ctx_mac', true), '') <> '' THEN
        RAISE EXCEPTION 'the tenant context is already set in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_context_twice';
    END IF;
    IF org_ref ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        target := org_ref::uuid;
    ELSE
        SELECT og.id INTO target FROM orgbase.organizations og WHERE og.slug = org_ref;
    END IF;
    SELECT se.id AS sid, se.user_id AS uid, se.last_seen_at AS seen, se.mfa_passed AS mfa,
           m.org_id AS oid, m.role AS role,
           coalesce((og.settings ->> 'require_mfa')::boolean, false) AS need_mfa,
           CASE WHEN m.org_id IS NULL THEN NULL
                WHEN EXISTS (SELECT 1 FROM orgbase.member_roles mr
                              WHERE mr.org_id = m.org_id AND mr.user_id = se.user_id)
                    THEN orgbase.member_app_roles(m.org_id, se.user_id)
                ELSE coalesce((SELECT string_agg(p.app || '=' || p.role, ',' ORDER BY p.app)
                                 FROM orgbase.app_permissions p
                                WHERE p.org_id = m.org_id AND p.user_id = se.user_id), '')
           END AS roles
      INTO ses
      FROM orgbase.sessions se
      JOIN orgbase.users us ON us.id = se.user_id
      LEFT JOIN (orgbase.members m JOIN orgbase.organizations og ON og.id = m.org_id AND og.deleted_at IS NULL AND og.id = target)
        ON m.user_id = se.user_id AND m.deleted_at IS NULL
       AND m.org_id = target
     WHERE se.token_hash = cred_hash
       AND se.revoked_at IS NULL
       AND se.expires_at > now()
       AND se.last_seen_at + se.idle_timeout > now()
       AND us.status = 'active' AND us.deleted_at IS NULL;
    IF FOUND THEN
        IF ses.seen < now() - interval '60 seconds' THEN
            UPDATE orgbase.sessions SET last_seen_at = now() WHERE id = ses.sid;
        END IF;
        IF ses.oid IS NULL THEN
            RAISE EXCEPTION 'no such organization, or not a member'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_not_member';
        END IF;
        IF ses.need_mfa AND NOT ses.mfa THEN
            RAISE EXCEPTION 'this organization requires multi-factor authentication'
                USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_mfa_required';
        END IF;
        uid := ses.uid;
        o := ses.oid;
        r := ses.role;
        a := ses.roles;
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
            set_config('orgbase.ctx_mac', encode(sha256(ck.outer_key || sha256(ck.inner_key || convert_to(
                concat_ws('|', o::text, uid::text, r, a, req, pg_backend_pid()::text,
                          extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex'), true)
      FROM orgbase.context_key ck WHERE ck.id = 1;
    org_id := o;
    user_id := uid;
    org_role := r;
    app_roles := a;
    RETURN NEXT;
END
$$;

DROP FUNCTION orgbase.key_app_roles(text[], text, uuid, uuid);
DROP FUNCTION orgbase.scopes_cover(text[], text[]);
DROP FUNCTION orgbase.scope_level(text[], text);
