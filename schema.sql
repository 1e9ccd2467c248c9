-- sip_trace for MySQL and MariaDB, as a DBA creates it:
--
--   mysql siptrace < schema.sql
--
-- The same table for the other databases: schema-postgresql.sql
-- (psql -v ON_ERROR_STOP=1 -d siptrace -f schema-postgresql.sql) and schema-sqlite.sql
-- (sqlite3 /var/lib/siptrace/siptrace.db < schema-sqlite.sql). siptrace creates the table
-- itself when it is missing; these files are for a DBA who creates it beforehand.
--
-- The table is defined once, in siptrace/store/schema.py (trace_model): each file holds
-- exactly the statements siptrace runs for its dialect (`table_ddl` renders them), laid
-- out for reading. tests/test_store_schema.py checks them against table_ddl as text,
-- feeds each file to the real client (mysql, psql, sqlite3), and compares the table it
-- makes with siptrace's, column by column and index by index. The table name is a
-- parameter (`--table`): replace sip_trace for another. MySQL has no CREATE INDEX IF
-- NOT EXISTS: run this file once.
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
