-- orgbase:run-as admin
-- Database roles, database privileges and the orgbase schema.
--
-- This is the only migration that runs as the administrative user (the one in the database
-- URL): it creates the roles every later migration relies on, and every later migration runs
-- as orgbase_owner (`SET LOCAL ROLE orgbase_owner`), so that the owner owns every object.
-- Why four roles, and what each may do, is part of the threat model in docs/security.md.
--
--   orgbase_owner     owns every orgbase object; migrations run as it (DDL). NOLOGIN: the
--                     migrator connects as the administrative user and SETs this role.
--   orgbase_runtime   what requests use: DML only, NOBYPASSRLS, owns nothing.
--   orgbase_readonly  read-only analytics; row-level security applies to it.
--   orgbase_backup    pg_dump; BYPASSRLS because a dump must see every organization's rows.
--
-- Roles are cluster-wide, so this migration creates them only when missing and then pins their
-- attributes, whatever they were.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgbase_owner') THEN
        CREATE ROLE orgbase_owner NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgbase_runtime') THEN
        CREATE ROLE orgbase_runtime LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgbase_readonly') THEN
        CREATE ROLE orgbase_readonly LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'orgbase_backup') THEN
        CREATE ROLE orgbase_backup LOGIN;
    END IF;
END
$$;

ALTER ROLE orgbase_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE orgbase_runtime LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
ALTER ROLE orgbase_readonly LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
ALTER ROLE orgbase_backup LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS NOINHERIT;

-- The migrator must be able to SET ROLE orgbase_owner.
GRANT orgbase_owner TO CURRENT_USER;

-- Nobody but the roles above may connect or create objects in this database.
DO $$
BEGIN
    EXECUTE format('REVOKE CREATE, TEMPORARY, CONNECT ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO orgbase_runtime, orgbase_readonly, orgbase_backup',
                   current_database());
END
$$;

-- The schema and the migrations table were created by the runner; hand them to the owner.
ALTER SCHEMA orgbase OWNER TO orgbase_owner;
ALTER TABLE orgbase.schema_migrations OWNER TO orgbase_owner;

GRANT USAGE ON SCHEMA orgbase TO orgbase_runtime, orgbase_readonly, orgbase_backup;
GRANT SELECT ON orgbase.schema_migrations TO orgbase_runtime, orgbase_readonly, orgbase_backup;

-- Every table the owner creates later is usable by the runtime role for DML only (no TRUNCATE,
-- REFERENCES or TRIGGER), readable by the read-only and backup roles. Tables that must be
-- closed to the runtime role say so where they are created (REVOKE right after CREATE TABLE).
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA orgbase
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO orgbase_runtime;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA orgbase
    GRANT USAGE, SELECT ON SEQUENCES TO orgbase_runtime;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA orgbase
    GRANT SELECT ON TABLES TO orgbase_readonly, orgbase_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA orgbase
    GRANT SELECT ON SEQUENCES TO orgbase_backup;
-- Functions the owner creates are not executable by PUBLIC unless a migration grants it
-- (a global default: per-schema defaults cannot revoke).
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
