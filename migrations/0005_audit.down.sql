-- Undo 0005: the audit triggers on the identity tables, the capture functions and the audit log.
DROP TRIGGER audit_row ON orgbase.member_roles;
DROP TRIGGER audit_row ON orgbase.roles;
DROP TRIGGER audit_row ON orgbase.api_keys;
DROP TRIGGER audit_row ON orgbase.team_members;
DROP TRIGGER audit_row ON orgbase.teams;
DROP TRIGGER audit_row ON orgbase.invitations;
DROP TRIGGER audit_row ON orgbase.app_permissions;
DROP TRIGGER audit_row ON orgbase.members;
DROP TRIGGER audit_row ON orgbase.organizations;
DROP TRIGGER audit_row ON orgbase.users;
DROP FUNCTION orgbase.audit_event(uuid, text, jsonb, inet, text);
DROP FUNCTION orgbase.audit_row();
DROP TABLE orgbase.audit_heads;
DROP TABLE orgbase.audit_log;
DROP FUNCTION orgbase.audit_guard();
