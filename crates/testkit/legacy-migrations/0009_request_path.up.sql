-- A cheaper request path (docs/performance.md), same rules and same errors:
--   * begin_request authenticates a session, its membership, the organization's MFA policy and
--     the member's app roles in one statement, and computes the context MAC inline;
--   * ctx_check(app) verifies the context once and answers the caller's level in the app, so
--     a policy needs one verification where it needed two (org, then level);
--   * the insert policy checks org, creator, editor and level with one row comparison against
--     one ctx_check call: one InitPlan, one verification, where it had four.

-- The verified context plus the caller's level in an app: 0 none, 1 viewer, 2 editor, 3 admin
-- (organization owners and admins are admins of every app). One MAC check per call; raises
-- orgbase_no_context / orgbase_bad_context like orgbase.ctx().
CREATE FUNCTION orgbase.ctx_check(app text, OUT org_id uuid, OUT user_id uuid, OUT level int)
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
    mine text;
BEGIN
    IF coalesce(o, '') = '' OR coalesce(m, '') = '' THEN
        RAISE EXCEPTION 'no tenant context in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_no_context';
    END IF;
    IF m IS DISTINCT FROM (
        SELECT encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
                   concat_ws('|', o, u, r, a, q, pg_backend_pid()::text,
                             extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex')
          FROM orgbase.context_key k WHERE k.id = 1) THEN
        RAISE EXCEPTION 'invalid tenant context'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_context';
    END IF;
    org_id := o::uuid;
    user_id := u::uuid;
    IF r IN ('owner', 'admin') THEN
        level := 3;
    ELSE
        -- app_roles is 'app=role,app=role'
        mine := substring(',' || a || ',' FROM ',' || app || '=([a-z]+),');
        level := CASE mine WHEN 'admin' THEN 3 WHEN 'editor' THEN 2 WHEN 'viewer' THEN 1 ELSE 0 END;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION orgbase.ctx_check(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.ctx_check(text) TO orgbase_runtime, orgbase_readonly;

-- The organization and user of the verified context, through the same single check.
CREATE OR REPLACE FUNCTION orgbase.ctx_org() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx_check(NULL)).org_id $$;

CREATE OR REPLACE FUNCTION orgbase.ctx_user() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx_check(NULL)).user_id $$;

-- Same answer as before, one verification instead of a plpgsql call around ctx().
CREATE OR REPLACE FUNCTION orgbase.ctx_app_level(app text) RETURNS int
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx_check(app)).level $$;

-- The role matrix of SPEC R3, as before (0003), with the insert check as one row comparison:
-- PostgreSQL evaluates the sub-select once per statement (an InitPlan with four outputs).
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

-- Re-create the policies of the registered tenant tables (Citus ones keep their form: their
-- select policy calls the context functions without a sub-select).
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

-- begin_request: the session path in one statement (session, user, organization by id or
-- slug, membership, MFA policy, app roles) and the MAC computed inline. API keys take the
-- path of migration 0005 unchanged. Same errors, same HINTs.
CREATE OR REPLACE FUNCTION orgbase.begin_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL,
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

-- The audit capture trigger without a query per row for the record id (one column, the
-- common case) and without jsonb subtraction when nothing is hidden or quiet. Same entries.
CREATE OR REPLACE FUNCTION orgbase.audit_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    hide text[] := CASE WHEN TG_NARGS > 2 AND TG_ARGV[2] <> '' THEN string_to_array(TG_ARGV[2], ',') END;
    quiet text[] := CASE WHEN TG_NARGS > 3 AND TG_ARGV[3] <> '' THEN string_to_array(TG_ARGV[3], ',') END;
    o jsonb;
    n jsonb;
    j jsonb;
    act text := lower(TG_OP);
    uid uuid;
    q jsonb;
    rid text;
BEGIN
    IF TG_OP <> 'INSERT' THEN o := coalesce(to_jsonb(OLD) - hide, to_jsonb(OLD)); END IF;
    IF TG_OP <> 'DELETE' THEN n := coalesce(to_jsonb(NEW) - hide, to_jsonb(NEW)); END IF;
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

-- Request tickets ----------------------------------------------------------------------------
-- Authenticating a credential (session lookup, membership, MFA policy, app roles) is most of
-- the database work of a small request. open_request does it and also returns a ticket: a MAC,
-- with the context key, over what it established (credential hash, organization reference,
-- client address, organization, user, roles, API key) plus the identity epoch and an expiry at
-- most 10 seconds away. The server keeps the ticket in memory and opens the next requests of
-- that credential in that organization with resume_request, which checks the MAC, the expiry
-- and that the epoch is still current, then sets the same context as begin_request.
-- The epoch moves on every change that can narrow what a credential may do — a session revoked
-- or its MFA state changed, a user suspended or deleted, a membership, app permission, custom
-- role or organization setting changed, an API key revoked or narrowed — so such a change takes
-- effect at once for every ticket; expiry and idle timeout take effect within the ticket's life.
CREATE TABLE orgbase.identity_epoch (
    id int PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL
);
INSERT INTO orgbase.identity_epoch VALUES (1, 1);
REVOKE ALL ON orgbase.identity_epoch FROM orgbase_runtime, orgbase_readonly;

CREATE FUNCTION orgbase.identity_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    UPDATE orgbase.identity_epoch SET epoch = epoch + 1 WHERE id = 1;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION orgbase.identity_changed() FROM PUBLIC;

CREATE TRIGGER identity_changed AFTER UPDATE OF revoked_at, expires_at, idle_timeout, mfa_passed, user_id
    OR DELETE ON orgbase.sessions FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();
CREATE TRIGGER identity_changed AFTER UPDATE OF status, deleted_at
    OR DELETE ON orgbase.users FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();
CREATE TRIGGER identity_changed AFTER UPDATE OF settings, deleted_at, slug
    OR DELETE ON orgbase.organizations FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();
CREATE TRIGGER identity_changed AFTER UPDATE OR DELETE ON orgbase.members
    FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();
CREATE TRIGGER identity_changed AFTER INSERT OR UPDATE OR DELETE ON orgbase.app_permissions
    FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();
CREATE TRIGGER identity_changed AFTER INSERT OR UPDATE OR DELETE ON orgbase.member_roles
    FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();
CREATE TRIGGER identity_changed AFTER INSERT OR UPDATE OR DELETE ON orgbase.roles
    FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();
CREATE TRIGGER identity_changed AFTER UPDATE OF revoked_at, expires_at, scopes, ip_allow, user_id, org_id
    OR DELETE ON orgbase.api_keys FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();
CREATE TRIGGER identity_changed AFTER INSERT OR UPDATE OR DELETE ON orgbase.tenant_tables
    FOR EACH STATEMENT EXECUTE FUNCTION orgbase.identity_changed();

-- The MAC of a ticket (context key, 'ticket' domain). Not SECURITY DEFINER and not callable by
-- the runtime role; without a SET clause (names qualified instead) so that it is inlined into
-- open_request and resume_request.
CREATE FUNCTION orgbase.ticket_mac(inner_key bytea, outer_key bytea, cred_hash bytea, org_ref text, client_ip inet,
                                   org uuid, usr uuid, org_role text, app_roles text, key_id uuid,
                                   epoch text, expires text)
RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.encode(pg_catalog.sha256(outer_key OPERATOR(pg_catalog.||) pg_catalog.sha256(inner_key OPERATOR(pg_catalog.||) pg_catalog.convert_to(
               pg_catalog.concat_ws('|', 'ticket', pg_catalog.encode(cred_hash, 'hex'), org_ref,
                         COALESCE(client_ip::pg_catalog.text, ''),
                         org::pg_catalog.text, usr::pg_catalog.text, org_role, app_roles,
                         COALESCE(key_id::pg_catalog.text, ''),
                         epoch, expires), 'UTF8'))), 'hex')
$$;
REVOKE ALL ON FUNCTION orgbase.ticket_mac(bytea, bytea, bytea, text, inet, uuid, uuid, text, text, uuid, text, text) FROM PUBLIC;

-- begin_request, plus the ticket for the following requests ('epoch.expires.mac').
CREATE FUNCTION orgbase.open_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL,
                                     request_id text DEFAULT NULL, user_agent text DEFAULT NULL)
RETURNS TABLE (org_id uuid, user_id uuid, org_role text, app_roles text, key_id uuid, ticket text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    b record;
    kid uuid;
    e bigint;
    x bigint := extract(epoch FROM now())::bigint + 10;
    until timestamptz;
BEGIN
    SELECT * INTO b FROM orgbase.begin_request(cred_hash, org_ref, client_ip, request_id, user_agent);
    kid := (current_setting('orgbase.req', true)::jsonb ->> 'key')::uuid;
    IF kid IS NULL THEN
        SELECT least(se.expires_at, se.last_seen_at + se.idle_timeout) INTO until
          FROM orgbase.sessions se WHERE se.token_hash = cred_hash;
    ELSE
        SELECT ak.expires_at INTO until FROM orgbase.api_keys ak WHERE ak.key_hash = cred_hash;
    END IF;
    IF until IS NOT NULL THEN
        x := least(x, floor(extract(epoch FROM until))::bigint);
    END IF;
    SELECT ie.epoch INTO e FROM orgbase.identity_epoch ie WHERE ie.id = 1;
    org_id := b.org_id;
    user_id := b.user_id;
    org_role := b.org_role;
    app_roles := b.app_roles;
    key_id := kid;
    ticket := e::text || '.' || x::text || '.' ||
              (SELECT orgbase.ticket_mac(k.inner_key, k.outer_key, cred_hash, org_ref, client_ip, b.org_id, b.user_id,
                                         b.org_role, b.app_roles, kid, e::text, x::text)
                 FROM orgbase.context_key k WHERE k.id = 1);
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.open_request(bytea, text, inet, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.open_request(bytea, text, inet, text, text) TO orgbase_runtime;

-- The context of a request from a ticket open_request gave for the same credential,
-- organization reference and client address. A ticket that is expired, from an earlier epoch
-- or not this server's → orgbase_stale_ticket (the server then calls open_request).
CREATE FUNCTION orgbase.resume_request(cred_hash bytea, org_ref text, client_ip inet, request_id text,
                                       user_agent text, org uuid, usr uuid, role text, roles text,
                                       key_id uuid, ticket text)
RETURNS TABLE (org_id uuid, user_id uuid, org_role text, app_roles text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    part text[] := string_to_array(ticket, '.');
    e bigint;
    x bigint;
    ik bytea;
    ok bytea;
    cur_epoch bigint;
    req text;
BEGIN
    IF coalesce(current_setting('orgbase.ctx_mac', true), '') <> '' THEN
        RAISE EXCEPTION 'the tenant context is already set in this transaction'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_context_twice';
    END IF;
    SELECT ck.inner_key, ck.outer_key, ie.epoch INTO ik, ok, cur_epoch
      FROM orgbase.context_key ck, orgbase.identity_epoch ie WHERE ck.id = 1 AND ie.id = 1;
    -- The MAC first (over the text as given), so that only what open_request wrote is parsed.
    IF part[3] IS DISTINCT FROM orgbase.ticket_mac(ik, ok, cred_hash, org_ref, client_ip, org, usr, role,
                                                   roles, key_id, part[1], part[2]) THEN
        RAISE EXCEPTION 'the request ticket is stale or not valid'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_stale_ticket';
    END IF;
    e := part[1]::bigint;
    x := part[2]::bigint;
    IF x < extract(epoch FROM now()) OR e IS DISTINCT FROM cur_epoch THEN
        RAISE EXCEPTION 'the request ticket is stale or not valid'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_stale_ticket';
    END IF;
    req := jsonb_build_object('key', key_id, 'ip', client_ip, 'rid', left(request_id, 64),
                              'ua', left(user_agent, 256))::text;
    PERFORM set_config('orgbase.org_id', org::text, true),
            set_config('orgbase.user_id', usr::text, true),
            set_config('orgbase.org_role', role, true),
            set_config('orgbase.app_roles', roles, true),
            set_config('orgbase.req', req, true),
            set_config('orgbase.ctx_mac', encode(sha256(ok || sha256(ik || convert_to(
                concat_ws('|', org::text, usr::text, role, roles, req, pg_backend_pid()::text,
                          extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex'), true);
    org_id := org;
    user_id := usr;
    org_role := role;
    app_roles := roles;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.resume_request(bytea, text, inet, text, text, uuid, uuid, text, text, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.resume_request(bytea, text, inet, text, text, uuid, uuid, text, text, uuid, text) TO orgbase_runtime;
