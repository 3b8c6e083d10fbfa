-- Rights inside an organization that fail closed (docs/api.md "API key scopes",
-- docs/security.md "Rights inside an organization"):
--   * an API key reaches only the apps its scopes name, at most at the scope's level and at
--     most at its creator's; a read key changes nothing, not even its creator's own rows;
--   * a key acts as an ordinary member unless it has the `admin` scope, and creates keys only
--     with scopes its own cover;
--   * restoring a soft-deleted row needs the rights that deleting it needed;
--   * nobody joins an organization without accepting an invitation, and a removed member
--     rejoins only that way;
--   * a task is assigned to active members only; a key cannot be created already expired.
--
-- The scope grammar (one scope per array element):
--   <app>:read | <app>:write | <app>:admin   at most viewer / editor / admin in that app
--   *:read | *:write | *:admin               the same in every app
--   admin                                    organization administration with the creator's
--                                            organization role; no app data by itself
-- An app that no scope names is closed to the key, whoever created it.
--
-- A key's context carries its levels in app_roles like a person's, marked as a key's by a
-- leading '@' entry and followed by '@<app>=<role>' entries: the scope's own level in each app,
-- up to which the key has its creator's "own row" rights. For example a notes:write key of a
-- member without an app role: '@,@notes=editor' (no level in notes, own rows up to editing).

-- The best level the scopes give in an app: 0 none, 1 read, 2 write, 3 admin. `*` scopes count
-- for every app; scope_level(scopes, '*') is the level of the `*` scopes alone.
CREATE FUNCTION orgbase.scope_level(scopes text[], app text) RETURNS int
LANGUAGE sql IMMUTABLE
AS $$
    SELECT COALESCE(pg_catalog.max(CASE pg_catalog.split_part(s, ':', 2)
                                    WHEN 'read' THEN 1 WHEN 'write' THEN 2 WHEN 'admin' THEN 3 END), 0)
      FROM pg_catalog.unnest(scopes) s
     WHERE pg_catalog.split_part(s, ':', 1) IN (app, '*')
$$;
GRANT EXECUTE ON FUNCTION orgbase.scope_level(text[], text) TO orgbase_runtime;

-- Whether the scopes `have` cover every scope of `want` (a key may only create keys that can
-- do no more than itself).
CREATE FUNCTION orgbase.scopes_cover(have text[], want text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT COALESCE(pg_catalog.bool_and(
               CASE WHEN w = 'admin' THEN 'admin' = ANY (have)
                    ELSE orgbase.scope_level(have, pg_catalog.split_part(w, ':', 1))
                         >= orgbase.scope_level(ARRAY[w], pg_catalog.split_part(w, ':', 1)) END), true)
      FROM pg_catalog.unnest(want) w
$$;
GRANT EXECUTE ON FUNCTION orgbase.scopes_cover(text[], text[]) TO orgbase_runtime;

-- The app_roles of an API key's context (see the head of this migration): per app, the lower
-- of the creator's level and the scopes' level, then the scopes' own levels.
CREATE FUNCTION orgbase.key_app_roles(scopes text[], creator_role text, org uuid, usr uuid) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, orgbase
AS $$
    WITH mine AS (
        SELECT split_part(x, '=', 1) AS app,
               coalesce(array_position(ARRAY['viewer', 'editor', 'admin'], split_part(x, '=', 2)), 0) AS lvl
          FROM unnest(string_to_array(orgbase.member_app_roles(org, usr), ',')) x
    ), g AS (
        SELECT apps.app,
               least(CASE WHEN creator_role IN ('owner', 'admin') THEN 3
                          ELSE coalesce((SELECT max(m.lvl) FROM mine m WHERE m.app = apps.app), 0) END,
                     orgbase.scope_level(scopes, apps.app)) AS lvl,
               orgbase.scope_level(scopes, apps.app) AS cap
          FROM (SELECT t.app FROM orgbase.tenant_tables t
                UNION SELECT p.app FROM orgbase.app_permissions p WHERE p.org_id = org) apps
    )
    SELECT concat_ws(',', '@',
                     (SELECT string_agg(g.app || '=' || (ARRAY['viewer', 'editor', 'admin'])[g.lvl], ',' ORDER BY g.app)
                        FROM g WHERE g.lvl > 0),
                     (SELECT string_agg('@' || g.app || '=' || (ARRAY['viewer', 'editor', 'admin'])[g.cap], ',' ORDER BY g.app)
                        FROM g WHERE g.cap > 0))
$$;
REVOKE ALL ON FUNCTION orgbase.key_app_roles(text[], text, uuid, uuid) FROM PUBLIC;

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
        -- A key acts as its creator narrowed by its scopes, failing closed: see
        -- orgbase.key_app_roles. Without the admin scope it is an ordinary member.
        r := CASE WHEN 'admin' = ANY (k.scopes) THEN k.role ELSE 'member' END;
        a := orgbase.key_app_roles(k.scopes, k.role, o, uid);
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

-- The verified context plus the caller's rights in an app: `level` (0 none, 1 viewer, 2 editor,
-- 3 admin) over every row, and `own`, the level up to which the caller has its rights over the
-- rows it created — 3 for a person, the scope's level for an API key. Organization owners and
-- admins are admins of every app; their keys are not (a key's levels are its own).
-- The tenant tables' insert policies call it directly: they go while it is replaced.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tt.table_name FROM orgbase.tenant_tables tt LOOP
        EXECUTE format('DROP POLICY IF EXISTS tenant_insert ON %s', t.table_name);
    END LOOP;
END
$$;
DROP FUNCTION orgbase.ctx_check(text);
CREATE FUNCTION orgbase.ctx_check(app text, OUT org_id uuid, OUT user_id uuid, OUT level int, OUT own int)
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
    level := CASE split_part(split_part(',' || a || ',', ',' || app || '=', 2), ',', 1)
                 WHEN 'admin' THEN 3 WHEN 'editor' THEN 2 WHEN 'viewer' THEN 1 ELSE 0 END;
    IF left(a, 1) = '@' THEN
        -- An API key: its levels and its own-row levels ('@app=role') are all in app_roles.
        own := CASE split_part(split_part(',' || a || ',', ',@' || app || '=', 2), ',', 1)
                   WHEN 'admin' THEN 3 WHEN 'editor' THEN 2 WHEN 'viewer' THEN 1 ELSE 0 END;
    ELSE
        IF r IN ('owner', 'admin') THEN
            level := 3;
        END IF;
        own := 3;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION orgbase.ctx_check(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.ctx_check(text) TO orgbase_runtime, orgbase_readonly;

-- The caller's id when its own-row rights in the app reach `need`, else NULL (which no
-- created_by equals): the "own row" side of the tenant policies.
CREATE FUNCTION orgbase.ctx_owner(app text, need int) RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT CASE WHEN c.own >= need THEN c.user_id END FROM orgbase.ctx_check(app) c $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_owner(text, int) TO orgbase_runtime, orgbase_readonly;

-- The role matrix: read = same org AND (viewer OR own row); insert = same org AND created_by =
-- caller AND editor; update = same org AND (editor on a live row OR admin OR own row); the new
-- row may be soft-deleted only by an admin or its creator; delete = same org AND (admin OR own
-- row). Own rows need the key's scope: reading them read, changing or deleting them write.
-- Restoring is an update of a soft-deleted row, so it needs what deleting needed.
CREATE OR REPLACE FUNCTION orgbase.tenant_policies(tbl regclass, app text, citus boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    o text := CASE WHEN citus THEN 'orgbase.ctx_org()' ELSE '(SELECT orgbase.ctx_org())' END;
    r text := CASE WHEN citus THEN format('orgbase.ctx_owner(%L, 1)', app)
                   ELSE format('(SELECT orgbase.ctx_owner(%L, 1))', app) END;
    w text := CASE WHEN citus THEN format('orgbase.ctx_owner(%L, 2)', app)
                   ELSE format('(SELECT orgbase.ctx_owner(%L, 2))', app) END;
    u text := CASE WHEN citus THEN 'orgbase.ctx_user()' ELSE '(SELECT orgbase.ctx_user())' END;
    l text := CASE WHEN citus THEN format('orgbase.ctx_app_level(%L)', app)
                   ELSE format('(SELECT orgbase.ctx_app_level(%L))', app) END;
    p text;
BEGIN
    FOREACH p IN ARRAY ARRAY['tenant_select', 'tenant_insert', 'tenant_update', 'tenant_delete'] LOOP
        EXECUTE format('DROP POLICY IF EXISTS %I ON %s', p, tbl);
    END LOOP;
    -- The app level comes first: when it suffices, the own-row side is never computed.
    EXECUTE format('CREATE POLICY tenant_select ON %s FOR SELECT USING (org_id = %s AND (%s >= 1 OR created_by = %s))',
                   tbl, o, l, r);
    IF citus THEN
        EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK (org_id = %s AND %s >= 2 AND created_by = %s AND updated_by = %s)',
                       tbl, o, l, u, u);
    ELSE
        EXECUTE format('CREATE POLICY tenant_insert ON %s FOR INSERT WITH CHECK ('
                       '(org_id, created_by, updated_by, true) = '
                       '(SELECT c.org_id, c.user_id, c.user_id, c.level >= 2 FROM orgbase.ctx_check(%L) c))',
                       tbl, app);
    END IF;
    EXECUTE format('CREATE POLICY tenant_update ON %s FOR UPDATE '
                   'USING (org_id = %s AND ((%s >= 2 AND deleted_at IS NULL) OR %s >= 3 OR created_by = %s)) '
                   'WITH CHECK (org_id = %s AND (deleted_at IS NULL OR %s >= 3 OR created_by = %s))',
                   tbl, o, l, l, w, o, l, w);
    EXECUTE format('CREATE POLICY tenant_delete ON %s FOR DELETE USING (org_id = %s AND (%s >= 3 OR created_by = %s))',
                   tbl, o, l, w);
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
               NOT EXISTS (SELECT 1 FROM pg_policy p
                            WHERE p.polrelid = tt.table_name AND p.polname = 'tenant_select'
                              AND pg_get_expr(p.polqual, p.polrelid) LIKE '%SELECT %') AS citus
          FROM orgbase.tenant_tables tt
    LOOP
        PERFORM orgbase.tenant_policies(t.table_name, t.app, t.citus);
    END LOOP;
END
$$;

-- API keys: creating one needs organization administration, a future expiry and scopes that
-- the creating credential covers (a person's keys are bounded by the person's rights when they
-- are used; a key's by its own scopes, checked here).
CREATE FUNCTION orgbase.ctx_may_grant(want text[]) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record;
    kid uuid;
BEGIN
    SELECT * INTO c FROM orgbase.ctx();
    kid := (current_setting('orgbase.req', true)::jsonb ->> 'key')::uuid;
    IF kid IS NULL THEN
        RETURN true;
    END IF;
    RETURN coalesce((SELECT orgbase.scopes_cover(k.scopes, want)
                       FROM orgbase.api_keys k WHERE k.org_id = c.org_id AND k.id = kid), false);
END
$$;
REVOKE ALL ON FUNCTION orgbase.ctx_may_grant(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.ctx_may_grant(text[]) TO orgbase_runtime;

DROP POLICY api_key_admin ON orgbase.api_keys;
CREATE POLICY api_key_read ON orgbase.api_keys FOR SELECT
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
CREATE POLICY api_key_insert ON orgbase.api_keys FOR INSERT
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
                AND user_id = (SELECT orgbase.ctx_user())
                AND (expires_at IS NULL OR expires_at > now())
                AND orgbase.ctx_may_grant(scopes));
CREATE POLICY api_key_update ON orgbase.api_keys FOR UPDATE
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
                AND user_id = (SELECT orgbase.ctx_user()));

-- Members: the runtime role inserts none. A person joins by creating an organization or by
-- accepting an invitation (both functions of the owner), so nobody is enrolled without consent.
DROP POLICY member_insert ON orgbase.members;
REVOKE INSERT ON orgbase.members FROM orgbase_runtime;

-- Nor may a removed membership be brought back by an update: the person accepts an invitation.
CREATE FUNCTION orgbase.members_no_revival() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF OLD.deleted_at IS NOT NULL AND NEW.deleted_at IS NULL
       AND NOT pg_has_role(current_user, 'orgbase_owner', 'MEMBER') THEN
        RAISE EXCEPTION 'a removed member rejoins only by accepting an invitation'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER members_no_revival BEFORE UPDATE OF deleted_at ON orgbase.members
    FOR EACH ROW EXECUTE FUNCTION orgbase.members_no_revival();

-- A member reference that must name an active member (the composite foreign key to members
-- is satisfied by a removed member's row too). The columns are the trigger's arguments.
CREATE FUNCTION orgbase.require_active_member() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    col text;
    who uuid;
BEGIN
    FOREACH col IN ARRAY TG_ARGV LOOP
        who := to_jsonb(NEW) ->> col;
        IF who IS NOT NULL
           AND (TG_OP = 'INSERT' OR who IS DISTINCT FROM (to_jsonb(OLD) ->> col)::uuid)
           AND NOT EXISTS (SELECT 1 FROM orgbase.members m
                            WHERE m.org_id = NEW.org_id AND m.user_id = who AND m.deleted_at IS NULL) THEN
            RAISE EXCEPTION 'not an active member of this organization'
                USING ERRCODE = 'foreign_key_violation', COLUMN = col, HINT = 'orgbase_inactive_member';
        END IF;
    END LOOP;
    RETURN NEW;
END
$$;
CREATE TRIGGER tasks_assignee_active BEFORE INSERT OR UPDATE OF assignee_id ON orgbase.tasks
    FOR EACH ROW EXECUTE FUNCTION orgbase.require_active_member('assignee_id');
