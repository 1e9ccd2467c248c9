-- sip_trace for ClickHouse 20.1 and later, as a cluster's operator creates it: on every
-- server of the cluster `siptrace` (defined in <remote_servers>), in database `siptrace`:
--
--   clickhouse-client --database siptrace --multiquery < schema-clickhouse.sql
--
-- or once with `ON CLUSTER siptrace` after each table name (distributed DDL: needs
-- ClickHouse Keeper or ZooKeeper). Sidecars then write to and read from sip_trace:
--   db_url = clickhouse://siptrace:PASSWORD@<any server>:9000/siptrace
--
-- The table is defined once, in siptrace/store/clickhouse/schema.py (table_ddl): this
-- file holds exactly the statements it renders for a cluster on a current release, and
-- tests/test_store_schema.py checks them as text. Design: docs/storage.md, "ClickHouse".
--
-- One server, no cluster: siptrace creates the table itself (sip_trace_local's statement
-- named sip_trace). With replicas: ENGINE = ReplicatedMergeTree('/clickhouse/tables/
-- {shard}/siptrace/sip_trace_local', '{replica}') and <internal_replication>true
-- (docs/scaling.md).
--
-- Servers before 20.1 have no DateTime64: there `date DateTime('UTC')` holds the seconds
-- and `date_us UInt32` the microseconds (Kamailio's time_stamp and time_us); before
-- 19.1 there are no column codecs, and the server's <compression> setting (zstd)
-- compresses msg. siptrace renders that form itself for the server it talks to.
--
-- Retention: `siptrace purge --older-than 30d` (cron) drops whole days; on current
-- releases a TTL can do it instead, on every shard (whole parts, as purge drops days):
--   ALTER TABLE sip_trace_local MODIFY SETTING ttl_only_drop_parts = 1;
--   ALTER TABLE sip_trace_local MODIFY TTL toDate(date) + 30;

CREATE TABLE IF NOT EXISTS sip_trace_local (
  id UInt64,
  date DateTime64(6, 'UTC'),
  callid String,
  method String,
  status String,
  fromip String,
  toip String,
  fromtag String,
  direction String,
  traced_user String,
  msg String CODEC(ZSTD(3))
)
ENGINE = MergeTree
PARTITION BY toDate(date)
ORDER BY (toStartOfHour(date), callid, date);

CREATE TABLE IF NOT EXISTS sip_trace AS sip_trace_local
ENGINE = Distributed(siptrace, siptrace, sip_trace_local, cityHash64(callid));
