-- Back to the context MAC under orgbase.context_key (migrations 0005 and 0009).

DROP FUNCTION orgbase.begin_request(bytea, text, inet, text, text);
ALTER FUNCTION orgbase.authenticate_request(bytea, text, inet, text, text) RENAME TO begin_request;
GRANT EXECUTE ON FUNCTION orgbase.begin_request(bytea, text, inet, text, text) TO orgbase_runtime;

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

CREATE OR REPLACE FUNCTION orgbase.ctx_check(app text, OUT org_id uuid, OUT user_id uuid, OUT level int)
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

CREATE OR REPLACE FUNCTION orgbase.resume_request(cred_hash bytea, org_ref text, client_ip inet, request_id text,
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

DROP FUNCTION orgbase.set_context(uuid, uuid, text, text, text);
DROP FUNCTION orgbase.session_mac(bytea, text, text, text, text, text);
DROP FUNCTION orgbase.session_key();
DROP SEQUENCE orgbase.session_key_a, orgbase.session_key_b;
