-- sip_trace: the table siptrace writes, as a DBA creates it.
--
-- One section per dialect, each starting with a line "-- dialect: NAME". The table is
-- defined once, in siptrace/store/schema.py (trace_model); this file holds exactly the
-- statements siptrace runs when the table is missing (`table_ddl` there renders them),
-- laid out for reading. tests/test_store_schema.py checks both: these statements
-- against table_ddl as text, and the tables both make, column by column and index by
-- index, on a real server of each kind. The table name is a parameter (`--table`):
-- replace sip_trace (and the index name prefixes on PostgreSQL/SQLite) for another.
-- MySQL has no CREATE INDEX IF NOT EXISTS: run its section once.
--
-- Deviations from the OpenSER siptrace documentation (section 1.5), all three dialects:
--   * msg is MEDIUMTEXT on MySQL: TEXT stops at 65,535 bytes and SIP messages with
--     large bodies exceed it (modern Kamailio uses MEDIUMTEXT too). Elsewhere TEXT.
--   * date keeps microseconds (DATETIME(6); TIMESTAMP is microsecond on PostgreSQL):
--     the capture time of the packet, not the second the row was written.
--   * date has no default: '0000-00-00 00:00:00' is rejected by MySQL's strict modes
--     (NO_ZERO_DATE) and is not a valid timestamp elsewhere; siptrace always sets it.
--   * utf8mb4: display names and bodies in any script; non-UTF-8 bytes are escaped
--     reversibly by siptrace (docs/storage.md, "Text fidelity").
--   * PostgreSQL and SQLite index names are per schema, not per table, so they carry
--     the table name as a prefix (sip_trace_user_idx ...); MySQL keeps the documented names.

-- dialect: mysql
CREATE TABLE IF NOT EXISTS `sip_trace` (
  `id` BIGINT AUTO_INCREMENT NOT NULL PRIMARY KEY,
  `date` DATETIME(6) NOT NULL,
  `callid` VARCHAR(254) NOT NULL DEFAULT '',
  `traced_user` VARCHAR(128) NOT NULL DEFAULT '',
  `msg` MEDIUMTEXT NOT NULL,
  `method` VARCHAR(50) NOT NULL DEFAULT '',
  `status` VARCHAR(254) NOT NULL DEFAULT '',
  `fromip` VARCHAR(50) NOT NULL DEFAULT '',
  `toip` VARCHAR(50) NOT NULL DEFAULT '',
  `fromtag` VARCHAR(64) NOT NULL DEFAULT '',
  `direction` VARCHAR(4) NOT NULL DEFAULT ''
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE INDEX `user_idx` ON `sip_trace` (`traced_user`);
CREATE INDEX `date_id` ON `sip_trace` (`date`);
CREATE INDEX `ip_idx` ON `sip_trace` (`fromip`);
CREATE INDEX `call_id` ON `sip_trace` (`callid`);

-- dialect: postgresql
CREATE TABLE IF NOT EXISTS "sip_trace" (
  "id" BIGSERIAL NOT NULL PRIMARY KEY,
  "date" TIMESTAMP NOT NULL,
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

-- dialect: sqlite
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
