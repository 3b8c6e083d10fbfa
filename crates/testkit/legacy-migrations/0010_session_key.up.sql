-- The tenant context's MAC under a key private to the database connection (docs/security.md).
--
-- Until now every check of the context (once per policy sub-select, once per audited row) read
-- orgbase.context_key with a query of its own: an executor start, two relation locks and a scan
-- inside plpgsql, about half the cost of a check. The context MAC is bound to one transaction of
-- one backend anyway (pid and transaction start are in it), so its key can be one the backend
-- alone holds: 128 random bits kept as the session values (currval) of two sequences the
-- runtime and readonly roles have no privilege on. A check then reads the key with currval(), a
-- plain function call, and the whole verification is expressions plpgsql evaluates without the
-- executor. The key is drawn (setval) the first time a connection establishes a context.
-- Tickets keep their MAC under orgbase.context_key: they must verify on every connection.

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

-- The verified context (same errors as before).
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

-- The verified context plus the caller's level in an app (0 none, 1 viewer, 2 editor, 3 admin).
CREATE OR REPLACE FUNCTION orgbase.ctx_check(app text, OUT org_id uuid, OUT user_id uuid, OUT level int)
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
    IF r IN ('owner', 'admin') THEN
        level := 3;
    ELSE
        -- app_roles is 'app=role,app=role'
        level := CASE substring(',' || a || ',' FROM ',' || app || '=([a-z]+),')
                     WHEN 'admin' THEN 3 WHEN 'editor' THEN 2 WHEN 'viewer' THEN 1 ELSE 0 END;
    END IF;
END
$$;

-- begin_request keeps its authentication (migration 0009) under another name, closed to the
-- runtime role, and sets the context with the connection's key.
ALTER FUNCTION orgbase.begin_request(bytea, text, inet, text, text) RENAME TO authenticate_request;
REVOKE ALL ON FUNCTION orgbase.authenticate_request(bytea, text, inet, text, text) FROM PUBLIC, orgbase_runtime;

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

-- resume_request as in 0009, setting the context with the connection's key; the key and epoch
-- query and the ticket check unchanged.
CREATE OR REPLACE FUNCTION orgbase.resume_request(cred_hash bytea, org_ref text, client_ip inet, request_id text,
                                                  user_agent text, org uuid, usr uuid, role text, roles text,
                                                  key_id uuid, ticket text)
RETURNS TABLE (org_id uuid, user_id uuid, org_role text, app_roles text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    part text[] := string_to_array(ticket, '.');
    ik bytea;
    ok bytea;
    cur_epoch bigint;
    m text;
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
    IF part[2]::bigint < extract(epoch FROM now()) OR part[1]::bigint IS DISTINCT FROM cur_epoch THEN
        RAISE EXCEPTION 'the request ticket is stale or not valid'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_stale_ticket';
    END IF;
    m := orgbase.set_context(org, usr, role, roles,
                                jsonb_build_object('key', key_id, 'ip', client_ip, 'rid', left(request_id, 64),
                                                   'ua', left(user_agent, 256))::text);
    org_id := org;
    user_id := usr;
    org_role := role;
    app_roles := roles;
    RETURN NEXT;
END
$$;
