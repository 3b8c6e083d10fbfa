-- Access logs: the HTTP access log and the read-access log of PHI tables (docs/audit.md,
-- "Access logs").
--
-- Both are partitioned by retention class (organizations with the hipaa compliance flag: 6
-- years; others: 1 year), then by month, so that retention drops whole monthly partitions
-- instead of deleting rows (orgbase.maintain_logs, run by the server at start and daily). They
-- are written only through SECURITY DEFINER functions and are not readable by the runtime role:
-- a request cannot read or rewrite who accessed what.

CREATE TABLE orgbase.access_log (
    at timestamptz NOT NULL,
    hipaa boolean NOT NULL,
    org_id uuid,
    user_id uuid,
    method text NOT NULL,
    route text NOT NULL,
    status smallint NOT NULL,
    latency_ms real NOT NULL,
    request_id text,
    ip inet
) PARTITION BY LIST (hipaa);
CREATE TABLE orgbase.access_log_std PARTITION OF orgbase.access_log FOR VALUES IN (false)
    PARTITION BY RANGE (at);
CREATE TABLE orgbase.access_log_hipaa PARTITION OF orgbase.access_log FOR VALUES IN (true)
    PARTITION BY RANGE (at);

CREATE TABLE orgbase.read_access_log (
    at timestamptz NOT NULL DEFAULT now(),
    hipaa boolean NOT NULL,
    org_id uuid NOT NULL,
    user_id uuid NOT NULL,
    actor_key uuid,
    table_name text NOT NULL,
    record_ids uuid[] NOT NULL,
    request_id text,
    ip inet
) PARTITION BY LIST (hipaa);
CREATE TABLE orgbase.read_access_log_std PARTITION OF orgbase.read_access_log FOR VALUES IN (false)
    PARTITION BY RANGE (at);
CREATE TABLE orgbase.read_access_log_hipaa PARTITION OF orgbase.read_access_log FOR VALUES IN (true)
    PARTITION BY RANGE (at);
-- Written only through log_access / log_read; not readable by the runtime role.
REVOKE ALL ON orgbase.access_log, orgbase.access_log_std, orgbase.access_log_hipaa,
              orgbase.read_access_log, orgbase.read_access_log_std, orgbase.read_access_log_hipaa
    FROM orgbase_runtime;

-- Monthly partitions from last month to two months ahead; partitions whose month ended before
-- the retention period are dropped. Returns one line per partition created or dropped.
CREATE FUNCTION orgbase.maintain_logs(at timestamptz DEFAULT now(), std_months int DEFAULT 12,
                                      hipaa_months int DEFAULT 72)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    base text;
    class text;
    m date;
    keep int;
    p record;
BEGIN
    FOREACH base IN ARRAY ARRAY['access_log', 'read_access_log'] LOOP
        FOREACH class IN ARRAY ARRAY['std', 'hipaa'] LOOP
            FOR i IN -1..2 LOOP
                m := (date_trunc('month', at AT TIME ZONE 'UTC') + make_interval(months => i))::date;
                IF to_regclass(format('orgbase.%s_%s_%s', base, class, to_char(m, 'YYYYMM'))) IS NULL THEN
                    EXECUTE format('CREATE TABLE orgbase.%I PARTITION OF orgbase.%I FOR VALUES FROM (%L) TO (%L)',
                                   format('%s_%s_%s', base, class, to_char(m, 'YYYYMM')),
                                   base || '_' || class,
                                   (m::timestamp AT TIME ZONE 'UTC'),
                                   ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
                    EXECUTE format('REVOKE ALL ON orgbase.%I FROM orgbase_runtime',
                                   format('%s_%s_%s', base, class, to_char(m, 'YYYYMM')));
                    RETURN NEXT format('created orgbase.%s_%s_%s', base, class, to_char(m, 'YYYYMM'));
                END IF;
            END LOOP;
            keep := CASE class WHEN 'std' THEN std_months ELSE hipaa_months END;
            FOR p IN
                SELECT c.relname
                  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = format('orgbase.%s_%s', base, class)::regclass
                   AND c.relname ~ '_[0-9]{6}$'
                   AND (to_date(right(c.relname, 6), 'YYYYMM') + interval '1 month')
                       <= date_trunc('month', at AT TIME ZONE 'UTC') - make_interval(months => keep)
                 ORDER BY c.relname
            LOOP
                EXECUTE format('DROP TABLE orgbase.%I', p.relname);
                RETURN NEXT format('dropped orgbase.%s', p.relname);
            END LOOP;
        END LOOP;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION orgbase.maintain_logs(timestamptz, int, int) FROM PUBLIC;
-- The first partitions (which months they are depends on the day this runs).
SELECT count(*) FROM orgbase.maintain_logs();

-- The server's access-log writer: a batch of requests; the retention class comes from the
-- organization's compliance flags. Rows for months without a partition are an error (the server
-- runs maintain_logs at start and daily).
CREATE FUNCTION orgbase.log_access(at timestamptz[], org_id uuid[], user_id uuid[], method text[],
                                   route text[], status smallint[], latency_ms real[],
                                   request_id text[], ip inet[])
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    INSERT INTO orgbase.access_log (at, hipaa, org_id, user_id, method, route, status, latency_ms,
                                    request_id, ip)
    SELECT r.at, coalesce('hipaa' = ANY (o.compliance), false), r.org_id, r.user_id, r.method,
           left(r.route, 200), r.status, r.latency_ms, left(r.request_id, 64), r.ip
      FROM unnest(at, org_id, user_id, method, route, status, latency_ms, request_id, ip)
           AS r (at, org_id, user_id, method, route, status, latency_ms, request_id, ip)
      LEFT JOIN orgbase.organizations o ON o.id = r.org_id
$$;
REVOKE ALL ON FUNCTION orgbase.log_access(timestamptz[], uuid[], uuid[], text[], text[], smallint[], real[], text[], inet[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.log_access(timestamptz[], uuid[], uuid[], text[], text[], smallint[], real[], text[], inet[]) TO orgbase_runtime;

-- In a request: record that the caller read these rows of a PHI table (same transaction as the
-- read, so a read that is answered is a read that is logged).
CREATE FUNCTION orgbase.log_read(tbl text, ids uuid[]) RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
DECLARE
    c record := orgbase.ctx();
    q jsonb := current_setting('orgbase.req', true)::jsonb;
BEGIN
    INSERT INTO orgbase.read_access_log (hipaa, org_id, user_id, actor_key, table_name, record_ids,
                                         request_id, ip)
    SELECT coalesce('hipaa' = ANY (o.compliance), false), c.org_id, c.user_id,
           (q ->> 'key')::uuid, tbl, ids, q ->> 'rid', (q ->> 'ip')::inet
      FROM orgbase.organizations o WHERE o.id = c.org_id;
END
$$;
REVOKE ALL ON FUNCTION orgbase.log_read(text, uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.log_read(text, uuid[]) TO orgbase_runtime;
