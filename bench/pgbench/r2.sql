-- R2, one request as a server runs it: one random note of a random org by id, under RLS.
-- Run as bench_app (see ../reference.sql). Four round trips: BEGIN, context, query, COMMIT.
\set o random(1, 100)
\set k random(1, 1000)
BEGIN;
SELECT set_config('app.org_id', md5('org' || :o)::uuid::text, true);
SELECT org_id, id, title, body, tags, created_at, updated_at, deleted_at, created_by, updated_by
  FROM notes
 WHERE org_id = md5('org' || :o)::uuid AND id = md5('note' || :o || '-' || :k)::uuid
   AND deleted_at IS NULL;
COMMIT;
