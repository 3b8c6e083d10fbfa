-- Request tickets: authenticating a credential once and resuming the context of its next
-- requests cheaply (docs/security.md, "Request tickets"; docs/performance.md).
--
-- Authenticating a credential (session lookup, membership, MFA policy, app roles) is most of
-- the database work of a small request. open_request does it and also returns a ticket: a MAC,
-- with the context key, over what it established (credential hash, organization reference,
-- client address, organization, user, roles, API key) plus the identity epoch and an expiry at
-- most 10 seconds away. The server keeps the ticket in memory and opens the next requests of
-- that credential in that organization with resume_request, which checks the MAC, the expiry
-- and that the epoch is still current, then sets the same context as begin_request.
--
-- The epoch moves on every change that can narrow what a credential may do — a session revoked
-- or its MFA state changed, a user suspended or deleted, a membership, app permission, custom
-- role or organization setting changed, an API key revoked or narrowed, the tenant-table
-- catalog changed — so such a change takes effect at once for every ticket; expiry and idle
-- timeout take effect within the ticket's life. This migration comes after every table it
-- watches, and its triggers are the last thing created on them.

-- The identity epoch, closed to the runtime and read-only roles. Its value only matters for
-- equality (a ticket names the epoch it was made in). It starts at 2, the value a database
-- migrated through orgbase's earlier history of migrations ends at, so that both kinds of
-- database hold the same data.
CREATE TABLE orgbase.identity_epoch (
    id int PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL
);
INSERT INTO orgbase.identity_epoch VALUES (1, 2);
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

-- Statement-level triggers: one epoch step per statement, whatever the number of rows (also
-- none: an UPDATE that matches no row still moves the epoch).
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

-- begin_request, plus the ticket for the following requests ('epoch.expires.mac'). The expiry
-- is never later than the session's (absolute or idle) or the key's.
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
-- or not this server's → orgbase_stale_ticket (the server then calls open_request). It answers
-- nothing: the server already holds the context it resumes (the ticket's), and a set-returning
-- call would cost a tuple store and a result descriptor per request.
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
