-- orgbase:run-as admin
-- Undo 0001: default privileges, the schema's and the migrations table's owner, database
-- privileges, and the roles. Runs last, after every other down migration has removed its
-- objects. The roles are cluster-wide: they are dropped only when no other database still uses
-- them (otherwise a notice says so and they stay).
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner GRANT EXECUTE ON FUNCTIONS TO PUBLIC;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA orgbase
    REVOKE SELECT ON SEQUENCES FROM orgbase_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA orgbase
    REVOKE SELECT ON TABLES FROM orgbase_readonly, orgbase_backup;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA orgbase
    REVOKE USAGE, SELECT ON SEQUENCES FROM orgbase_runtime;
ALTER DEFAULT PRIVILEGES FOR ROLE orgbase_owner IN SCHEMA orgbase
    REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM orgbase_runtime;

REVOKE ALL ON orgbase.schema_migrations FROM orgbase_runtime, orgbase_readonly, orgbase_backup;
REVOKE ALL ON SCHEMA orgbase FROM orgbase_runtime, orgbase_readonly, orgbase_backup;
ALTER TABLE orgbase.schema_migrations OWNER TO CURRENT_USER;
ALTER SCHEMA orgbase OWNER TO CURRENT_USER;

DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM orgbase_runtime, orgbase_readonly, orgbase_backup',
                   current_database());
    EXECUTE format('GRANT TEMPORARY, CONNECT ON DATABASE %I TO PUBLIC', current_database());
END
$$;

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['orgbase_runtime', 'orgbase_readonly', 'orgbase_backup', 'orgbase_owner'] LOOP
        BEGIN
            EXECUTE format('DROP ROLE IF EXISTS %I', r);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role % is still used by another database; kept', r;
        END;
    END LOOP;
END
$$;
