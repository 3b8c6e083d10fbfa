-- The tenant context: how a transaction comes to act in one organization, as one user, and how
-- every policy verifies that it does.
--
-- The runtime role may run any SQL it likes, including
-- `SELECT set_config('orgbase.org_id', '<other org>', true)`, and must still be unable to act in
-- another organization (docs/security.md, "How", items 1–3). So the context is established only
-- by orgbase.begin_request (and, from a ticket, orgbase.resume_request), SECURITY DEFINER
-- functions that authenticate the caller's credential themselves and then set
-- transaction-local settings together with a MAC over them, the backend pid and the transaction
-- start time:
--
--   orgbase.org_id, orgbase.user_id   the organization and the user
--   orgbase.org_role                  owner, admin, manager or member
--   orgbase.app_roles                 'app=role,…' (viewer, editor, admin); an API key's is
--                                     marked by a leading '@' entry and carries the scopes' own
--                                     levels as '@app=role' entries (see key_app_roles)
--   orgbase.req                       who and from where, as JSON (API key, client address,
--                                     request id, user agent), for the audit trail
--   orgbase.ctx_mac                   the MAC over all of the above
--
-- The MAC key is private to the database connection: 128 random bits kept as the session values
-- (currval) of two unlogged sequences that no role running requests may read or set. A MAC is
-- bound to one transaction of one backend anyway, so no other connection needs the key, and
-- reading it is a plain function call rather than a query. Every check recomputes the MAC and
-- fails closed: no context is an error (orgbase_no_context), a changed setting too
-- (orgbase_bad_context), never "all rows".
--
-- The key and MAC helpers (session_mac, session_key, set_context) have no SET clause and
-- qualify every name instead (OPERATOR(pg_catalog.||) and so on): PostgreSQL inlines such SQL
-- functions into their callers and calls such plpgsql functions without switching search_path,
-- which keeps a context check cheap (docs/performance.md). Without a pinned search_path they are
-- safe only when called by the owner's functions, whose search_path is pinned, so they are closed
-- to every other role.
--
-- The request path itself (begin_request) also reads the organization tables, which the next
-- migration creates; PL/pgSQL resolves them when a function first runs.

-- The connection's MAC key --------------------------------------------------------------------

CREATE UNLOGGED SEQUENCE orgbase.session_key_a AS bigint
    MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 NO CYCLE;
CREATE UNLOGGED SEQUENCE orgbase.session_key_b AS bigint
    MINVALUE -9223372036854775808 MAXVALUE 9223372036854775807 NO CYCLE;
-- Default privileges give the runtime role USAGE (nextval/currval): no role that runs requests
-- may read or set these. The backup role keeps SELECT (pg_dump reads every sequence); it sees
-- only the shared last_value — the latest key drawn by some connection — and bypasses RLS anyway.
REVOKE ALL ON SEQUENCE orgbase.session_key_a, orgbase.session_key_b
    FROM PUBLIC, orgbase_runtime, orgbase_readonly;

-- The context MAC under this connection's key k (orgbase.session_key(), read once by the
-- caller): an NMAC (SHA-256) over the context, the request details, the backend and the
-- transaction start. SQL without a SET clause, so that plpgsql inlines it.
CREATE FUNCTION orgbase.session_mac(k bytea, o text, u text, r text, a text, q text)
RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT pg_catalog.encode(pg_catalog.sha256(
               '\x6f'::bytea OPERATOR(pg_catalog.||) k OPERATOR(pg_catalog.||) pg_catalog.sha256(
                   '\x69'::bytea OPERATOR(pg_catalog.||) k
                   OPERATOR(pg_catalog.||) pg_catalog.convert_to(pg_catalog.concat_ws('|', o, u, r, a, q,
                       pg_catalog.pg_backend_pid()::pg_catalog.text,
                       pg_catalog.date_part('epoch', pg_catalog.transaction_timestamp())::pg_catalog.text),
                       'UTF8'))), 'hex')
$$;
REVOKE ALL ON FUNCTION orgbase.session_mac(bytea, text, text, text, text, text) FROM PUBLIC;

-- This connection's key (16 bytes). currval() raises for a caller without privilege on the
-- sequences, and on a connection whose key was never drawn. VOLATILE like currval(), so that
-- it is inlined (PostgreSQL does not inline a STABLE function that calls a volatile one; it
-- would parse and plan the body on every call).
CREATE FUNCTION orgbase.session_key()
RETURNS bytea
LANGUAGE sql VOLATILE
AS $$
    SELECT pg_catalog.int8send(pg_catalog.currval('orgbase.session_key_a'))
           OPERATOR(pg_catalog.||) pg_catalog.int8send(pg_catalog.currval('orgbase.session_key_b'))
$$;
REVOKE ALL ON FUNCTION orgbase.session_key() FROM PUBLIC;

-- Set the verified context of this transaction (called by begin_request and resume_request,
-- which have authenticated it). Draws the connection's key first if it has none: currval()
-- raises before the first setval of a connection (and after DISCARD SEQUENCES / DISCARD ALL);
-- the two are always drawn together. Not SECURITY DEFINER and no SET clause (a plpgsql call less
-- per request): only the owner's functions, whose search_path is pinned, may call it. Returns the
-- MAC. Assignments rather than PERFORM throughout: plpgsql evaluates an assignment's expression
-- directly, while PERFORM always runs a query through the executor.
CREATE FUNCTION orgbase.set_context(o uuid, u uuid, r text, a text, q text)
RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    k bytea;
    n bigint;
    t text;
BEGIN
    BEGIN
        n := pg_catalog.currval('orgbase.session_key_a');
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        -- 2 × 64 bits from the strong random source behind gen_random_uuid (the version and
        -- variant bits of a UUID lie outside the bytes taken).
        k := pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) OPERATOR(pg_catalog.||)
             pg_catalog.uuid_send(pg_catalog.gen_random_uuid());
        n := pg_catalog.setval('orgbase.session_key_a',
                               ('x' || pg_catalog.encode(pg_catalog.substr(k, 1, 6) OPERATOR(pg_catalog.||) pg_catalog.substr(k, 10, 2), 'hex'))::bit(64)::bigint);
        n := pg_catalog.setval('orgbase.session_key_b',
                               ('x' || pg_catalog.encode(pg_catalog.substr(k, 17, 6) OPERATOR(pg_catalog.||) pg_catalog.substr(k, 26, 2), 'hex'))::bit(64)::bigint);
    END;
    t := pg_catalog.set_config('orgbase.org_id', o::text, true);
    t := pg_catalog.set_config('orgbase.user_id', u::text, true);
    t := pg_catalog.set_config('orgbase.org_role', r, true);
    t := pg_catalog.set_config('orgbase.app_roles', a, true);
    t := pg_catalog.set_config('orgbase.req', q, true);
    k := orgbase.session_key();
    RETURN pg_catalog.set_config('orgbase.ctx_mac', orgbase.session_mac(k, o::text, u::text, r, a, q), true);
END
$$;
REVOKE ALL ON FUNCTION orgbase.set_context(uuid, uuid, text, text, text) FROM PUBLIC;

-- Verifying the context --------------------------------------------------------------------

-- The verified context of this transaction; raises (fails closed) when missing or forged.
-- Returns org id, user id, org role and the app roles.
CREATE FUNCTION orgbase.ctx(OUT org_id uuid, OUT user_id uuid, OUT org_role text, OUT app_roles text)
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
    k := orgbase.session_key();
    IF m IS DISTINCT FROM orgbase.session_mac(k, o, u, r, a, current_setting('orgbase.req', true)) THEN
        RAISE EXCEPTION 'invalid tenant context'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_bad_context';
    END IF;
    org_id := o::uuid;
    user_id := u::uuid;
    org_role := r;
    app_roles := a;
END
$$;
GRANT EXECUTE ON FUNCTION orgbase.ctx() TO orgbase_runtime, orgbase_readonly;

-- The verified context plus the caller's rights in an app: `level` (0 none, 1 viewer, 2 editor,
-- 3 admin) over every row, and `own`, the level up to which the caller has its rights over the
-- rows it created — 3 for a person, the scope's level for an API key. Organization owners and
-- admins are admins of every app; their keys are not (a key's levels are its own). One MAC
-- check per call; the tenant policies call it (through the helpers below) in sub-selects, which
-- PostgreSQL evaluates once per statement.
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

-- The organization and user of the verified context, through the same single check.
CREATE FUNCTION orgbase.ctx_org() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx_check(NULL)).org_id $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_org() TO orgbase_runtime, orgbase_readonly;

CREATE FUNCTION orgbase.ctx_user() RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx_check(NULL)).user_id $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_user() TO orgbase_runtime, orgbase_readonly;

CREATE FUNCTION orgbase.ctx_org_role() RETURNS text
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx()).org_role $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_org_role() TO orgbase_runtime, orgbase_readonly;

-- Whether the caller is an owner or admin of the organization (policies of the organization
-- tables wrap it in a sub-select, so it is checked once per statement).
CREATE FUNCTION orgbase.ctx_is_admin() RETURNS boolean
LANGUAGE sql STABLE
AS $$ SELECT orgbase.ctx_org_role() IN ('owner', 'admin') $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_is_admin() TO orgbase_runtime;

-- The caller when there is a context, else NULL (maintenance by the administrator).
CREATE FUNCTION orgbase.ctx_user_if_any() RETURNS uuid
LANGUAGE sql STABLE
AS $$
    SELECT CASE WHEN coalesce(current_setting('orgbase.ctx_mac', true), '') <> ''
                THEN orgbase.ctx_user() END
$$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_user_if_any() TO orgbase_runtime;

-- The caller's level in an app: 0 none, 1 viewer, 2 editor, 3 admin.
CREATE FUNCTION orgbase.ctx_app_level(app text) RETURNS int
LANGUAGE sql STABLE
AS $$ SELECT (orgbase.ctx_check(app)).level $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_app_level(text) TO orgbase_runtime, orgbase_readonly;

-- The caller's id when its own-row rights in the app reach `need`, else NULL (which no
-- created_by equals): the "own row" side of the tenant policies.
CREATE FUNCTION orgbase.ctx_owner(app text, need int) RETURNS uuid
LANGUAGE sql STABLE
AS $$ SELECT CASE WHEN c.own >= need THEN c.user_id END FROM orgbase.ctx_check(app) c $$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_owner(text, int) TO orgbase_runtime, orgbase_readonly;

-- Superseded, kept for compatibility. The context MAC under orgbase.context_key (before the MAC
-- moved to the connection's key), without and with the request details, and the role matrix as
-- one function with a MAC check per row (before the policies checked once per statement).
-- Nothing in orgbase calls them any more; ctx_mac is closed to every role but the owner.
CREATE FUNCTION orgbase.ctx_mac(org text, usr text, org_role text, app_roles text)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    k record;
BEGIN
    SELECT inner_key, outer_key INTO k FROM orgbase.context_key WHERE id = 1;
    RETURN encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(
               concat_ws('|', org, usr, org_role, app_roles, pg_backend_pid()::text,
                         extract(epoch FROM transaction_timestamp())::text), 'UTF8'))), 'hex');
END
$$;
REVOKE ALL ON FUNCTION orgbase.ctx_mac(text, text, text, text) FROM PUBLIC;

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

CREATE FUNCTION orgbase.ctx_allows(row_org uuid, row_owner uuid, app text, action text)
RETURNS boolean
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
    app_role text;
BEGIN
    IF row_org IS DISTINCT FROM c.org_id THEN
        RETURN false;
    END IF;
    IF c.org_role IN ('owner', 'admin') THEN
        app_role := 'admin';
    ELSE
        SELECT split_part(x, '=', 2) INTO app_role
          FROM unnest(string_to_array(c.app_roles, ',')) x
         WHERE split_part(x, '=', 1) = app;
    END IF;
    RETURN CASE action
        WHEN 'read' THEN row_owner = c.user_id OR app_role IN ('viewer', 'editor', 'admin')
        WHEN 'insert' THEN app_role IN ('editor', 'admin')
        WHEN 'update' THEN row_owner = c.user_id OR app_role IN ('editor', 'admin')
        WHEN 'delete' THEN row_owner = c.user_id OR app_role = 'admin'
        ELSE false
    END;
END
$$;
GRANT EXECUTE ON FUNCTION orgbase.ctx_allows(uuid, uuid, text, text) TO orgbase_runtime, orgbase_readonly;

-- The catalog of tenant tables ------------------------------------------------------------------

-- Every table the generic API serves, and the app it belongs to (the unit of app roles and API
-- key scopes). Rows are added by orgbase.make_tenant_table (tenant-tables migration); the
-- runtime role only reads it. (REVOKE, then GRANT SELECT: the default privileges would give the
-- runtime role DML. The order of the two statements shows in the table's ACL.)
CREATE TABLE orgbase.tenant_tables (
    table_name regclass PRIMARY KEY,
    app text NOT NULL CHECK (app ~ '^[a-z][a-z0-9_]{0,62}$'),
    registered_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON orgbase.tenant_tables FROM orgbase_runtime;
GRANT SELECT ON orgbase.tenant_tables TO orgbase_runtime;

-- Establishing the context ---------------------------------------------------------------------

-- The app roles of a member: direct app permissions and custom-role permissions, the highest
-- per app, as 'app=role,…'.
CREATE FUNCTION orgbase.member_app_roles(org uuid, usr uuid) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM orgbase.member_roles mr WHERE mr.org_id = org AND mr.user_id = usr) THEN
        RETURN coalesce((SELECT string_agg(p.app || '=' || p.role, ',' ORDER BY p.app)
                           FROM orgbase.app_permissions p
                          WHERE p.org_id = org AND p.user_id = usr), '');
    END IF;
    RETURN (
    SELECT coalesce(string_agg(app || '=' || (ARRAY['viewer', 'editor', 'admin'])[lvl], ',' ORDER BY app), '')
      FROM (SELECT app, max(lvl) AS lvl
              FROM (SELECT p.app, array_position(ARRAY['viewer', 'editor', 'admin'], p.role) AS lvl
                      FROM orgbase.app_permissions p
                     WHERE p.org_id = org AND p.user_id = usr
                    UNION ALL
                    SELECT split_part(x, ':', 1),
                           array_position(ARRAY['viewer', 'editor', 'admin'], split_part(x, ':', 2))
                      FROM orgbase.member_roles mr
                      JOIN orgbase.roles r ON r.org_id = mr.org_id AND r.id = mr.role_id
                      CROSS JOIN unnest(r.permissions) x
                     WHERE mr.org_id = org AND mr.user_id = usr) g
             GROUP BY app) m);
END
$$;
REVOKE ALL ON FUNCTION orgbase.member_app_roles(uuid, uuid) FROM PUBLIC;

-- An organization id from an id or a slug (NULL when neither), each by its own index.
CREATE FUNCTION orgbase.org_of_ref(org_ref text) RETURNS uuid
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF org_ref ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RETURN (SELECT o.id FROM orgbase.organizations o WHERE o.id = org_ref::uuid AND o.deleted_at IS NULL);
    END IF;
    RETURN (SELECT o.id FROM orgbase.organizations o WHERE o.slug = org_ref AND o.deleted_at IS NULL);
END
$$;
REVOKE ALL ON FUNCTION orgbase.org_of_ref(text) FROM PUBLIC;

-- Authenticate a credential hash (session token or API key) for an organization id or slug and
-- compute the context begin_request then sets. The session path is one statement (session,
-- user, organization, membership, the organization's MFA policy, app roles); an API key acts as
-- its creator narrowed by its scopes (orgbase.key_app_roles), and without the admin scope as an
-- ordinary member. Errors carry a HINT the server maps to a status:
--   orgbase_unauthenticated (401)  unknown, expired or revoked credential, inactive user
--   orgbase_not_member (404)       no such organization, or the caller is not a member
--   orgbase_mfa_required (403)     the organization requires MFA and the session has not passed it
--   orgbase_ip_not_allowed (403)   API key used from outside its IP allow-list
--   orgbase_context_twice (403)    the context is already set in this transaction
-- It also sets the settings with a MAC under orgbase.context_key; begin_request overwrites the
-- MAC with one under the connection's key. Closed to the runtime role.
CREATE FUNCTION orgbase.authenticate_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL,
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
REVOKE ALL ON FUNCTION orgbase.authenticate_request(bytea, text, inet, text, text) FROM PUBLIC;

-- Establish the tenant context of this transaction: authenticate_request, then set the context
-- with the connection's key. Same errors.
CREATE FUNCTION orgbase.begin_request(cred_hash bytea, org_ref text, client_ip inet DEFAULT NULL,
                                      request_id text DEFAULT NULL, user_agent text DEFAULT NULL)
RETURNS TABLE (org_id uuid, user_id uuid, org_role text, app_roles text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    b record;
    m text;
BEGIN
    SELECT * INTO b FROM orgbase.authenticate_request(cred_hash, org_ref, client_ip, request_id, user_agent);
    m := orgbase.set_context(b.org_id, b.user_id, b.org_role, b.app_roles,
                                current_setting('orgbase.req', true));
    org_id := b.org_id;
    user_id := b.user_id;
    org_role := b.org_role;
    app_roles := b.app_roles;
    RETURN NEXT;
END
$$;
REVOKE ALL ON FUNCTION orgbase.begin_request(bytea, text, inet, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.begin_request(bytea, text, inet, text, text) TO orgbase_runtime;
