-- sip_trace for SQLite, as a DBA creates it:
--
--   sqlite3 /var/lib/siptrace/siptrace.db < schema-sqlite.sql
--
-- The same statements siptrace runs when the table is missing; defined once in
-- siptrace/store/schema.py and checked by tests/test_store_schema.py. The deviations
-- from the OpenSER documentation are listed in schema.sql (MySQL). The table name is
-- a parameter (`--table`): replace sip_trace, and the index name prefixes, for another.

CREATE TABLE IF NOT EXISTS "sip_trace" (
  "id" INTEGER NOT NULL PRIMARY KEY,
  "date" DATETIME NOT NULL,
  "callid" VARCHAR(254) NOT NULL DEFAULT '',
  "traced_user" VARCHAR(128) NOT NULL DEFAULT '',
  "msg" TEXT NOT NULL,
  "method" VARCHAR(50) NOT NULL DEFAULT '',
  "status" VARCHAR(254) NOT NULL DEFAULT '',
  "fromip" VARCHAR(50) NOT NULL DEFAULT '',
  "toip" VARCHAR(50) NOT NULL DEFAULT '',
  "fromtag" VARCHAR(64) NOT NULL DEFAULT '',
  "direction" VARCHAR(4) NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS "sip_trace_user_idx" ON "sip_trace" ("traced_user");
CREATE INDEX IF NOT EXISTS "sip_trace_date_id" ON "sip_trace" ("date");
CREATE INDEX IF NOT EXISTS "sip_trace_ip_idx" ON "sip_trace" ("fromip");
CREATE INDEX IF NOT EXISTS "sip_trace_call_id" ON "sip_trace" ("callid");
