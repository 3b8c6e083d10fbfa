-- Latency percentiles of the requests in the access log, for `orgbase slo report` and
-- GET /v1/slo: one row per class (read: GET and HEAD; write: every other method) and one per
-- class, method and route template, each with the number of requests, how many answered 5xx,
-- and the 50th, 95th and 99th percentile of the latency in milliseconds (nearest rank:
-- `percentile_disc`, a latency some request actually had).
--
-- Only the API's own requests count: preflights (OPTIONS), requests that matched no route and
-- the operational endpoints (health, readiness, metrics, the OpenAPI document and this report)
-- are left out. The access log is not readable by the runtime role; this function gives it the
-- aggregates only, never a row, an organization or an address.
CREATE FUNCTION orgbase.request_latencies(since timestamptz, until timestamptz)
RETURNS TABLE (class text, method text, route text, requests bigint, server_errors bigint,
               p50_ms real, p95_ms real, p99_ms real)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, orgbase
AS $$
    SELECT l.class, l.method, l.route, count(*), count(*) FILTER (WHERE l.status >= 500),
           percentile_disc(0.50) WITHIN GROUP (ORDER BY l.latency_ms),
           percentile_disc(0.95) WITHIN GROUP (ORDER BY l.latency_ms),
           percentile_disc(0.99) WITHIN GROUP (ORDER BY l.latency_ms)
      FROM (SELECT CASE WHEN a.method IN ('GET', 'HEAD') THEN 'read' ELSE 'write' END AS class,
                   a.method, a.route, a.status, a.latency_ms
              FROM orgbase.access_log a
             WHERE a.at >= since AND a.at < until
               AND a.method <> 'OPTIONS'
               AND a.route NOT IN ('unmatched', '/healthz', '/readyz', '/metrics',
                                   '/v1/openapi.json', '/v1/slo')) l
     GROUP BY GROUPING SETS ((l.class), (l.class, l.method, l.route))
$$;
REVOKE ALL ON FUNCTION orgbase.request_latencies(timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION orgbase.request_latencies(timestamptz, timestamptz) TO orgbase_runtime;
