-- Organizations and the organization-scoped identity tables: members, app permissions,
-- invitations, teams, custom roles and API keys; their row-level security; and the identity
-- functions that need an organization (creating one, accepting an invitation, looking up
-- members).
--
-- These tables are readable and writable by the runtime role under row-level security keyed on
-- the verified tenant context (orgbase.ctx_*), so SQL run as the runtime role inside org A can
-- at most do what an org-A admin can do through the API: rows of the caller's organization
-- only; writes by owners and admins (teams: managers too); only owners make or unmake owners.
-- RLS is enabled but not forced: the SECURITY DEFINER functions (owned by the table owner) must
-- see across organizations, to authenticate a credential for instance. docs/security.md
-- (items 6 and 7) is the threat model.
--
-- Every reference between these tables is a composite key over org_id, so that no row can point
-- into another organization. Where the runtime role may write only some columns, it has column
-- grants; a REVOKE ALL before a GRANT takes back what the default privileges gave (and the
-- order of the two shows in the table's ACL).

-- Organizations ------------------------------------------------------------------------------

-- `settings` holds typed settings (docs/api.md, "Organization settings"): require_mfa is a JSON
-- boolean, which the request path reads, so the database holds any writer to that type.
CREATE TABLE orgbase.organizations (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    slug text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
    owner_id uuid NOT NULL REFERENCES orgbase.users (id),
    settings jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
    region text NOT NULL DEFAULT 'us-east' CHECK (region IN (
        'us-east', 'eu-central', 'uk-south', 'canada-central', 'australia-east', 'singapore',
        'japan-east', 'india-central', 'brazil-south', 'south-africa', 'korea-central',
        'hong-kong', 'new-zealand', 'israel')),
    compliance text[] NOT NULL DEFAULT '{}'
        CHECK (compliance <@ ARRAY['gdpr', 'hipaa', 'soc2', 'iso27001', 'pci']),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    CONSTRAINT organizations_settings_types CHECK (
        jsonb_typeof(settings) = 'object'
        AND (NOT settings ? 'require_mfa' OR jsonb_typeof(settings -> 'require_mfa') = 'boolean'))
);

-- Members: a soft-deleted row is a removed member.
CREATE TABLE orgbase.members (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES orgbase.users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'manager', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX members_user_idx ON orgbase.members (user_id);

-- A member's role in an app (the app of orgbase.tenant_tables).
CREATE TABLE orgbase.app_permissions (
    org_id uuid NOT NULL,
    user_id uuid NOT NULL,
    app text NOT NULL CHECK (app ~ '^[a-z][a-z0-9_]{0,62}$'),
    role text NOT NULL CHECK (role IN ('admin', 'editor', 'viewer')),
    granted_by uuid DEFAULT orgbase.ctx_user_if_any() REFERENCES orgbase.users (id),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id, app),
    FOREIGN KEY (org_id, user_id) REFERENCES orgbase.members (org_id, user_id) ON DELETE CASCADE
);

-- Invitations: the only way into an existing organization. The invitee's email is pii, stored
-- encrypted under a key of the invitation's own (erasing the person destroys it); email_hash
-- is its blind index, which accept_invitation compares with the account's. Its presence is a
-- NOT VALID check, as for orgbase.users.
CREATE TABLE orgbase.invitations (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    email text NOT NULL CHECK (email LIKE 'enc:v1:%'
        OR (email = lower(email) AND position('@' IN email) > 1 AND length(email) <= 320)),
    role text NOT NULL CHECK (role IN ('admin', 'manager', 'member')),
    token_hash bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    invited_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL DEFAULT now() + interval '7 days',
    accepted_at timestamptz,
    accepted_by uuid REFERENCES orgbase.users (id),
    revoked_at timestamptz,
    email_hash bytea CHECK (length(email_hash) = 32),
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, invited_by) REFERENCES orgbase.members (org_id, user_id)
);
ALTER TABLE orgbase.invitations
    ADD CONSTRAINT invitations_email_hash_present CHECK (email_hash IS NOT NULL) NOT VALID;
COMMENT ON COLUMN orgbase.invitations.email IS
    'pii: ciphertext under the invitation''s key (plaintext when field encryption is off)';

CREATE TABLE orgbase.teams (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    UNIQUE (org_id, name),
    FOREIGN KEY (org_id, created_by) REFERENCES orgbase.members (org_id, user_id)
);

CREATE TABLE orgbase.team_members (
    org_id uuid NOT NULL,
    team_id uuid NOT NULL,
    user_id uuid NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, team_id, user_id),
    FOREIGN KEY (org_id, team_id) REFERENCES orgbase.teams (org_id, id) ON DELETE CASCADE,
    FOREIGN KEY (org_id, user_id) REFERENCES orgbase.members (org_id, user_id)
);

-- API keys. Scopes (docs/api.md, "API key scopes"), one per array element:
--   <app>:read | <app>:write | <app>:admin   at most viewer / editor / admin in that app
--   *:read | *:write | *:admin               the same in every app
--   admin                                    organization administration with the creator's
--                                            organization role; no app data by itself
-- An app that no scope names is closed to the key, whoever created it.
CREATE FUNCTION orgbase.valid_scopes(scopes text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT bool_and(s = 'admin' OR s ~ '^(\*|[a-z][a-z0-9_]{0,62}):(read|write|admin)$')
      FROM unnest(scopes) s
$$;
GRANT EXECUTE ON FUNCTION orgbase.valid_scopes(text[]) TO orgbase_runtime;

-- (The scope grammar check is named api_keys_scopes_check1: it was added after the column's
-- own check, and keeps the name PostgreSQL gave it then.)
CREATE TABLE orgbase.api_keys (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    prefix text NOT NULL CHECK (length(prefix) BETWEEN 4 AND 16),
    key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    user_id uuid NOT NULL DEFAULT orgbase.ctx_user(),
    scopes text[] NOT NULL CHECK (cardinality(scopes) BETWEEN 1 AND 64),
    ip_allow cidr[] NOT NULL DEFAULT '{}',
    expires_at timestamptz,
    last_used_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (org_id, id),
    FOREIGN KEY (org_id, user_id) REFERENCES orgbase.members (org_id, user_id),
    CONSTRAINT api_keys_scopes_check1 CHECK (orgbase.valid_scopes(scopes))
);

-- Custom roles: named permissions ('<app>:viewer|editor|admin') granted to members.
CREATE FUNCTION orgbase.valid_permissions(perms text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE
AS $$
    SELECT coalesce(bool_and(p ~ '^[a-z][a-z0-9_]{0,62}:(viewer|editor|admin)$'), true)
      FROM unnest(perms) p
$$;
GRANT EXECUTE ON FUNCTION orgbase.valid_permissions(text[]) TO orgbase_runtime;

CREATE TABLE orgbase.roles (
    org_id uuid NOT NULL REFERENCES orgbase.organizations (id) ON DELETE CASCADE,
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    permissions text[] NOT NULL DEFAULT '{}' CHECK (orgbase.valid_permissions(permissions)),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    PRIMARY KEY (org_id, id),
    UNIQUE (org_id, name)
);

CREATE TABLE orgbase.member_roles (
    org_id uuid NOT NULL,
    user_id uuid NOT NULL,
    role_id uuid NOT NULL,
    granted_by uuid NOT NULL DEFAULT orgbase.ctx_user(),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id, role_id),
    FOREIGN KEY (org_id, user_id) REFERENCES orgbase.members (org_id, user_id),
    FOREIGN KEY (org_id, role_id) REFERENCES orgbase.roles (org_id, id) ON DELETE CASCADE
);

-- API key rights ---------------------------------------------------------------------------------

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

-- The app_roles of an API key's context: per app, the lower of the creator's level and the
-- scopes' level, then the scopes' own levels. For example a notes:write key of a member without
-- an app role: '@,@notes=editor' (no level in notes, own rows up to editing).
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

-- Creating an API key needs organization administration, a future expiry and scopes that the
-- creating credential covers (a person's keys are bounded by the person's rights when they are
-- used; a key's by its own scopes, checked here).
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

-- Row-level security and grants --------------------------------------------------------------

ALTER TABLE orgbase.organizations ENABLE ROW LEVEL SECURITY;
CREATE POLICY org_read ON orgbase.organizations FOR SELECT USING (id = (SELECT orgbase.ctx_org()));
CREATE POLICY org_update ON orgbase.organizations FOR UPDATE
    USING (id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
REVOKE ALL ON orgbase.organizations FROM orgbase_runtime;
GRANT SELECT, UPDATE (name, settings, compliance, updated_at) ON orgbase.organizations TO orgbase_runtime;

-- The runtime role inserts no member at all: a person joins by creating an organization or by
-- accepting an invitation (both functions of the owner), so nobody is enrolled without consent.
-- Admins manage members; only owners make or unmake owners.
ALTER TABLE orgbase.members ENABLE ROW LEVEL SECURITY;
CREATE POLICY member_read ON orgbase.members FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY member_update ON orgbase.members FOR UPDATE
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
           AND (role <> 'owner' OR (SELECT orgbase.ctx_org_role()) = 'owner'))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org())
           AND (role <> 'owner' OR (SELECT orgbase.ctx_org_role()) = 'owner'));
REVOKE ALL ON orgbase.members FROM orgbase_runtime;
GRANT SELECT, UPDATE (role, updated_at, deleted_at) ON orgbase.members TO orgbase_runtime;

ALTER TABLE orgbase.app_permissions ENABLE ROW LEVEL SECURITY;
CREATE POLICY app_permission_read ON orgbase.app_permissions FOR SELECT
    USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY app_permission_write ON orgbase.app_permissions FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));
REVOKE ALL ON orgbase.app_permissions FROM orgbase_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON orgbase.app_permissions TO orgbase_runtime;

-- The token hash (and the blind index) can be written, never read back.
ALTER TABLE orgbase.invitations ENABLE ROW LEVEL SECURITY;
CREATE POLICY invitation_admin ON orgbase.invitations FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin())
                AND invited_by = (SELECT orgbase.ctx_user()));
REVOKE ALL ON orgbase.invitations FROM orgbase_runtime;
GRANT SELECT (org_id, id, email, role, invited_by, created_at, expires_at, accepted_at, accepted_by, revoked_at),
      INSERT (org_id, id, email, role, token_hash, expires_at, email_hash),
      UPDATE (revoked_at)
    ON orgbase.invitations TO orgbase_runtime;

ALTER TABLE orgbase.teams ENABLE ROW LEVEL SECURITY;
CREATE POLICY team_read ON orgbase.teams FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY team_write ON orgbase.teams FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_org_role()) IN ('owner', 'admin', 'manager'))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_org_role()) IN ('owner', 'admin', 'manager'));

ALTER TABLE orgbase.team_members ENABLE ROW LEVEL SECURITY;
CREATE POLICY team_member_read ON orgbase.team_members FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY team_member_write ON orgbase.team_members FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_org_role()) IN ('owner', 'admin', 'manager'))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_org_role()) IN ('owner', 'admin', 'manager'));

-- API keys: read, created and revoked by owners and admins. The key hash can be written, never
-- read back; a key is created only with a future expiry and scopes the creator may grant.
ALTER TABLE orgbase.api_keys ENABLE ROW LEVEL SECURITY;
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
REVOKE ALL ON orgbase.api_keys FROM orgbase_runtime;
GRANT SELECT (org_id, id, name, prefix, user_id, scopes, ip_allow, expires_at, last_used_at, created_at, revoked_at),
      INSERT (org_id, id, name, prefix, key_hash, scopes, ip_allow, expires_at),
      UPDATE (revoked_at)
    ON orgbase.api_keys TO orgbase_runtime;

ALTER TABLE orgbase.roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY role_read ON orgbase.roles FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY role_write ON orgbase.roles FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));

ALTER TABLE orgbase.member_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY member_role_read ON orgbase.member_roles FOR SELECT USING (org_id = (SELECT orgbase.ctx_org()));
CREATE POLICY member_role_write ON orgbase.member_roles FOR ALL
    USING (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()))
    WITH CHECK (org_id = (SELECT orgbase.ctx_org()) AND (SELECT orgbase.ctx_is_admin()));

-- Membership rules -----------------------------------------------------------------------------

-- An organization always keeps an active owner.
CREATE FUNCTION orgbase.members_keep_owner() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM orgbase.members
                    WHERE org_id = NEW.org_id AND role = 'owner' AND deleted_at IS NULL) THEN
        RAISE EXCEPTION 'an organization needs at least one owner'
            USING ERRCODE = 'check_violation', HINT = 'orgbase_last_owner';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER members_keep_owner AFTER UPDATE ON orgbase.members
    FOR EACH ROW EXECUTE FUNCTION orgbase.members_keep_owner();

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

-- Identity functions with an organization --------------------------------------------------

CREATE FUNCTION orgbase.org_json(org uuid) RETURNS jsonb
LANGUAGE sql STABLE
SET search_path = pg_catalog, orgbase
AS $$
    SELECT jsonb_build_object('id', o.id, 'name', o.name, 'slug', o.slug, 'owner_id', o.owner_id,
                              'settings', o.settings, 'region', o.region, 'compliance', o.compliance,
                              'created_at', o.created_at, 'updated_at', o.updated_at)
      FROM orgbase.organizations o WHERE o.id = org
$$;
REVOKE ALL ON FUNCTION orgbase.org_json(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.org_json(uuid) TO orgbase_runtime;

-- A new organization, with the caller (by session) as its owner.
CREATE FUNCTION orgbase.create_org(token_hash bytea, id uuid, name text, slug text, region text,
                                   compliance text[], settings jsonb)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid := (SELECT s.user_id FROM orgbase.session_of(token_hash) s);
BEGIN
    INSERT INTO orgbase.organizations (id, name, slug, owner_id, region, compliance, settings)
    VALUES (create_org.id, create_org.name, create_org.slug, uid, create_org.region,
            create_org.compliance, create_org.settings);
    INSERT INTO orgbase.members (org_id, user_id, role) VALUES (create_org.id, uid, 'owner');
    RETURN orgbase.org_json(create_org.id);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'an organization with this slug already exists'
        USING ERRCODE = 'unique_violation', HINT = 'orgbase_slug_taken';
END
$$;
REVOKE ALL ON FUNCTION orgbase.create_org(bytea, uuid, text, text, text, text[], jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.create_org(bytea, uuid, text, text, text, text[], jsonb) TO orgbase_runtime;

-- In an organization context: the user id of an email's blind index, for admins adding members.
CREATE FUNCTION orgbase.user_id_by_email(email_hash bytea) RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
BEGIN
    IF NOT orgbase.ctx_is_admin() THEN
        RAISE EXCEPTION 'only organization owners and admins may look up users'
            USING ERRCODE = 'insufficient_privilege', HINT = 'orgbase_forbidden';
    END IF;
    RETURN (SELECT u.id FROM orgbase.users u
             WHERE u.email_hash = user_id_by_email.email_hash AND u.deleted_at IS NULL);
END
$$;
REVOKE ALL ON FUNCTION orgbase.user_id_by_email(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.user_id_by_email(bytea) TO orgbase_runtime;

-- In an organization context: its members with their emails and names, as stored
-- (ciphertext): the server decrypts and sorts them.
CREATE FUNCTION orgbase.member_directory()
RETURNS TABLE (user_id uuid, email text, name text, role text, joined_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT m.user_id, u.email, u.name, m.role, m.created_at
      FROM orgbase.members m JOIN orgbase.users u ON u.id = m.user_id
     WHERE m.org_id = orgbase.ctx_org() AND m.deleted_at IS NULL
     ORDER BY m.user_id
$$;
REVOKE ALL ON FUNCTION orgbase.member_directory() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.member_directory() TO orgbase_runtime;

-- The caller (by session) joins the organization of an invitation addressed to its account
-- (same blind index), or rejoins it after having been removed.
CREATE FUNCTION orgbase.accept_invitation(token_hash bytea, invitation_hash bytea) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    uid uuid := (SELECT s.user_id FROM orgbase.session_of(token_hash) s);
    inv record;
BEGIN
    SELECT i.* INTO inv FROM orgbase.invitations i
     WHERE i.token_hash = invitation_hash AND i.accepted_at IS NULL AND i.revoked_at IS NULL
       AND i.expires_at > now()
     FOR UPDATE;
    IF NOT FOUND OR inv.email_hash IS DISTINCT FROM (SELECT u.email_hash FROM orgbase.users u WHERE u.id = uid) THEN
        RAISE EXCEPTION 'no such invitation for this account, or it expired'
            USING ERRCODE = 'no_data_found', HINT = 'orgbase_no_invitation';
    END IF;
    INSERT INTO orgbase.members (org_id, user_id, role) VALUES (inv.org_id, uid, inv.role)
    ON CONFLICT (org_id, user_id) DO UPDATE SET role = EXCLUDED.role, deleted_at = NULL, updated_at = now()
        WHERE members.deleted_at IS NOT NULL;
    UPDATE orgbase.invitations SET accepted_at = now(), accepted_by = uid
     WHERE org_id = inv.org_id AND id = inv.id;
    RETURN orgbase.org_json(inv.org_id);
END
$$;
REVOKE ALL ON FUNCTION orgbase.accept_invitation(bytea, bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.accept_invitation(bytea, bytea) TO orgbase_runtime;
