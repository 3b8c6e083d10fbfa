DROP FUNCTION orgbase.request_latencies(timestamptz, timestamptz);
