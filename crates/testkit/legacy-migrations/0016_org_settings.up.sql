-- Organization settings have types the database holds them to (docs/api.md, "Organization
-- settings"): `require_mfa` is a JSON boolean. The server refuses unknown and ill-typed settings
-- with 422; this constraint keeps any other writer from storing, say, "yes" or 0 where the
-- request path reads a boolean.
--
-- A value of another type stored before is made `true`: an unclear answer to "must members use
-- multi-factor authentication?" fails closed.
UPDATE orgbase.organizations
   SET settings = jsonb_set(settings, '{require_mfa}', 'true')
 WHERE settings ? 'require_mfa' AND jsonb_typeof(settings -> 'require_mfa') <> 'boolean';
ALTER TABLE orgbase.organizations ADD CONSTRAINT organizations_settings_types CHECK (
    jsonb_typeof(settings) = 'object'
    AND (NOT settings ? 'require_mfa' OR jsonb_typeof(settings -> 'require_mfa') = 'boolean'));
