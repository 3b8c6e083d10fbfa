-- R1 as one autocommit statement with WHERE org_id and no RLS (run as bench_norls).
\set o random(1, 100)
SELECT org_id, id, title, body, tags, created_at, updated_at, deleted_at, created_by, updated_by
  FROM notes
 WHERE org_id = md5('org' || :o)::uuid AND deleted_at IS NULL
 ORDER BY created_at DESC, id DESC
 LIMIT 20;
