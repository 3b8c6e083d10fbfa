-- Undo 0007: request tickets and the identity epoch with its triggers.
DROP FUNCTION orgbase.resume_request(bytea, text, inet, text, text, uuid, uuid, text, text, uuid, text);
DROP FUNCTION orgbase.open_request(bytea, text, inet, text, text);
DROP FUNCTION orgbase.ticket_mac(bytea, bytea, bytea, text, inet, uuid, uuid, text, text, uuid, text, text);
DROP TRIGGER identity_changed ON orgbase.tenant_tables;
DROP TRIGGER identity_changed ON orgbase.api_keys;
DROP TRIGGER identity_changed ON orgbase.roles;
DROP TRIGGER identity_changed ON orgbase.member_roles;
DROP TRIGGER identity_changed ON orgbase.app_permissions;
DROP TRIGGER identity_changed ON orgbase.members;
DROP TRIGGER identity_changed ON orgbase.organizations;
DROP TRIGGER identity_changed ON orgbase.users;
DROP TRIGGER identity_changed ON orgbase.sessions;
DROP FUNCTION orgbase.identity_changed();
DROP TABLE orgbase.identity_epoch;
