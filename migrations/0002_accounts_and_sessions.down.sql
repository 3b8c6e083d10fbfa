-- Undo 0002: the account functions, sessions, accounts and the database's secret key.
DROP FUNCTION orgbase.totp_confirm(bytea, bigint, bytea);
DROP FUNCTION orgbase.totp_secret(bytea, bigint, bytea);
DROP FUNCTION orgbase.totp_enroll(bytea, bytea);
DROP FUNCTION orgbase.me(bytea);
DROP FUNCTION orgbase.logout(bytea);
DROP FUNCTION orgbase.refresh_session(bytea, uuid, bytea, bytea, inet, text);
DROP FUNCTION orgbase.create_session(uuid, uuid, bytea, bytea, inet, text, boolean, interval, interval, bigint, bytea);
DROP FUNCTION orgbase.login_failed(bytea, inet, text, bigint, bytea);
DROP FUNCTION orgbase.login_lookup(bytea, bigint, bytea);
DROP FUNCTION orgbase.signup(uuid, bytea, text, text, text);
DROP FUNCTION orgbase.session_of(bytea);
DROP FUNCTION orgbase.require_proof(text, text, bigint, bytea);
DROP TABLE orgbase.sessions;
DROP TABLE orgbase.users;
DROP TABLE orgbase.context_key;
