-- Undo 0009: the access logs. Dropping a partitioned table drops its partitions, including the
-- monthly ones maintain_logs created.
DROP FUNCTION orgbase.log_read(text, uuid[]);
DROP FUNCTION orgbase.log_access(timestamptz[], uuid[], uuid[], text[], text[], smallint[], real[], text[], inet[]);
DROP FUNCTION orgbase.maintain_logs(timestamptz, int, int);
DROP TABLE orgbase.read_access_log;
DROP TABLE orgbase.access_log;
