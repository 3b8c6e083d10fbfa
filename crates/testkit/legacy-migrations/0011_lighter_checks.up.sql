-- Less work per request in the three functions every request runs (docs/performance.md),
-- same rules and same errors:
--   * ctx_check finds the caller's role in an app with string functions instead of a regular
--     expression (the regex was 1.4 % of all CPU under the W1 load);
--   * the audit trigger verifies the context MAC itself instead of calling orgbase.ctx() (a
--     second SECURITY DEFINER call with its own search_path switch per audited row), and renders
--     the row as JSON once (coalesce(to_jsonb(NEW) - hide, to_jsonb(NEW)) rendered it twice
--     when nothing is hidden);
--   * resume_request returns nothing instead of a one-row table: the server already holds the
--     context it resumes (the ticket's), and a set-returning call costs a tuple store and a
--     result descriptor per request.

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

-- The audit capture trigger (0009), verifying the context inline. Same entries, same errors
-- for a forged context (orgbase_bad_context).
CREATE OR REPLACE FUNCTION orgbase.audit_row() RETURNS trigger
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

-- resume_request (0010) without a result: the checks and the context it sets are unchanged.
DROP FUNCTION orgbase.resume_request(bytea, text, inet, text, text, uuid, uuid, text, text, uuid, text);
CREATE FUNCTION orgbase.resume_request(cred_hash bytea, org_ref text, client_ip inet, request_id text,
                                       user_agent text, org uuid, usr uuid, role text, roles text,
                                       key_id uuid, ticket text)
RETURNS void
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
END
$$;
REVOKE ALL ON FUNCTION orgbase.resume_request(bytea, text, inet, text, text, uuid, uuid, text, text, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.resume_request(bytea, text, inet, text, text, uuid, uuid, text, text, uuid, text) TO orgbase_runtime;
