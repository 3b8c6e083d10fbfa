-- R2 as one autocommit statement with WHERE org_id and no RLS (run as bench_norls).
\set o random(1, 100)
\set k random(1, 1000)
SELECT org_id, id, title, body, tags, created_at, updated_at, deleted_at, created_by, updated_by
  FROM notes
 WHERE org_id = md5('org' || :o)::uuid AND id = md5('note' || :o || '-' || :k)::uuid
   AND deleted_at IS NULL;
