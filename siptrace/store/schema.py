"""The sip_trace table, defined once: a peewee model per dialect.

Everything else is derived from or checked against ``trace_model``: TraceStore creates
the table through it, its columns' widths are what TraceStore cuts values to, and the
DBA's copies, schema.sql (MySQL), schema-postgresql.sql and schema-sqlite.sql, hold
exactly the statements ``table_ddl`` renders from it (tests/test_store_schema.py
compares them as text, and the tables each file makes through the real client with
siptrace's on each real server).

Deviations from the documentation's MySQL definition, the same as in schema.sql:
``date`` is DATETIME(6) (microseconds) with no zero-date default (strict SQL modes
reject '0000-00-00'), ``msg`` is MEDIUMTEXT (TEXT stops at 64 KB), utf8mb4. On
PostgreSQL and SQLite index names are per schema, not per table, so they carry the
table name as a prefix (``sip_trace_user_idx``).
"""

import peewee

from siptrace.rows import COLUMNS

# Column widths of the documented table (seed doc, section 1.5).
VARCHAR_WIDTHS = {
    "callid": 254, "traced_user": 128, "method": 50, "status": 254,
    "fromip": 50, "toip": 50, "fromtag": 64, "direction": 4,
}
# index name (documented) -> column
INDEXES = {"user_idx": "traced_user", "date_id": "date", "ip_idx": "fromip", "call_id": "callid"}
DATE_TYPES = {"mysql": "DATETIME(6)", "postgresql": "TIMESTAMP", "sqlite": "DATETIME"}
MSG_TYPES = {"mysql": "MEDIUMTEXT", "postgresql": "TEXT", "sqlite": "TEXT"}


def dialect_of(db: peewee.Database) -> str:
    if isinstance(db, peewee.PostgresqlDatabase):
        return "postgresql"
    if isinstance(db, peewee.MySQLDatabase):
        return "mysql"
    return "sqlite"


def index_name(dialect: str, table: str, name: str) -> str:
    """MySQL keeps the documented names; elsewhere they are prefixed with the table."""
    return name if dialect == "mysql" else f"{table}_{name}"


def check_table_name(table: str) -> str:
    # The settings' rule and its length bound (config.py, which imports no peewee):
    # every command and the store accept the same names; ConfigError for the others.
    from siptrace.config import check_table_name as table_rule
    return table_rule(table)


class _TypedField(peewee.Field):
    """A NOT NULL column whose SQL type is given per dialect."""

    def __init__(self, sql_type: str, default_empty: bool = True, **kwargs):
        self.field_type = sql_type
        constraints = [peewee.SQL("DEFAULT ''")] if default_empty else []
        super().__init__(null=False, constraints=constraints, **kwargs)


def trace_model(db: peewee.Database, table_name: str = "sip_trace") -> type[peewee.Model]:
    """A peewee model of the documented table for ``db``'s dialect."""
    check_table_name(table_name)
    dialect = dialect_of(db)
    attrs = {"id": peewee.BigAutoField()}
    for column in COLUMNS:
        if column == "date":
            attrs[column] = _TypedField(DATE_TYPES[dialect], default_empty=False)
        elif column == "msg":
            attrs[column] = _TypedField(MSG_TYPES[dialect], default_empty=False)
        else:
            attrs[column] = _TypedField(f"VARCHAR({VARCHAR_WIDTHS[column]})")
    settings = ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4"] if dialect == "mysql" else []
    meta = type("Meta", (), {"database": db, "table_name": table_name, "table_settings": settings,
                             "legacy_table_names": False})
    attrs["Meta"] = meta
    attrs["__module__"] = __name__
    model = type(f"TraceModel_{table_name}", (peewee.Model,), attrs)
    for name, column in INDEXES.items():
        model.add_index(peewee.ModelIndex(model, (getattr(model, column),),
                                          name=index_name(dialect, table_name, name)))
    return model


def create_table(model: type[peewee.Model]) -> None:
    """Create the table and its indexes when missing (IF NOT EXISTS)."""
    db = model._meta.database
    db.create_tables([model], safe=True)


_DATABASES = {"mysql": peewee.MySQLDatabase, "postgresql": peewee.PostgresqlDatabase,
              "sqlite": peewee.SqliteDatabase}


def table_ddl(dialect: str, table: str = "sip_trace") -> list[str]:
    """The statements ``create_table`` runs on an empty database of ``dialect``
    (its schema file): CREATE TABLE, then each index."""
    schema = trace_model(_DATABASES[dialect](None), table)._schema
    statements = []
    for query in [schema._create_table(safe=True), *schema._create_indexes(safe=True)]:
        sql, params = query.query()
        assert not params, sql  # DDL carries no values
        statements.append(sql)
    return statements


# -- the call index: siptrace's companion table, one row per Call-ID --------------------
# Searches (`siptrace calls`, the web view) read it instead of scanning msg. siptrace
# keeps it as it writes; `siptrace index` builds it for a table another program wrote.
CALLS_SUFFIX = "_calls"
INDEX_STATE_TABLE = "siptrace_index_state"
CALL_WIDTHS = {
    "from_user": 128, "from_name": 128, "to_user": 128, "to_name": 128, "method": 50,
    "status": 16, "reason": 128, "methods": 254, "codes": 254, "ips": 254, "xcid": 254,
    "session": 64,
}
CALL_INDEXES = ("first_date", "last_date", "xcid", "session")


def calls_table_name(trace_table: str) -> str:
    return trace_table + CALLS_SUFFIX


def calls_model(db: peewee.Database, trace_table: str = "sip_trace") -> type[peewee.Model]:
    """The call index of ``trace_table``: a CallSummary per Call-ID (view/summary.py)."""
    dialect = dialect_of(db)
    table = calls_table_name(check_table_name(trace_table))
    date = DATE_TYPES[dialect]
    attrs = {
        # Call-IDs are case-sensitive (RFC 3261 section 20.8): binary on MySQL.
        "callid": _TypedField(f"VARCHAR({VARCHAR_WIDTHS['callid']})"
                              + (" CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                                 if dialect == "mysql" else ""),
                              default_empty=False, primary_key=True),
        "first_date": _TypedField(date, default_empty=False),
        "last_date": _TypedField(date, default_empty=False),
        **{name: _TypedField(f"VARCHAR({width})") for name, width in CALL_WIDTHS.items()},
        "msg_count": peewee.IntegerField(default=0),
        "has_request": peewee.BooleanField(default=False),
    }
    settings = ["ENGINE=InnoDB", "DEFAULT CHARSET=utf8mb4"] if dialect == "mysql" else []
    attrs["Meta"] = type("Meta", (), {"database": db, "table_name": table, "primary_key": False,
                                      "table_settings": settings, "legacy_table_names": False})
    attrs["__module__"] = __name__
    model = type(f"CallsModel_{table}", (peewee.Model,), attrs)
    model._meta.set_primary_key("callid", model.callid)
    for column in CALL_INDEXES:
        model.add_index(peewee.ModelIndex(model, (getattr(model, column),),
                                          name=f"{table}_{column}"))
    return model


def index_state_model(db: peewee.Database) -> type[peewee.Model]:
    """How far each trace table of the database is indexed: its last row id folded in."""
    attrs = {
        "table_name": peewee.CharField(max_length=64, primary_key=True),
        "last_id": peewee.BigIntegerField(default=0),
        "updated": peewee.DateTimeField(null=True),
        "Meta": type("Meta", (), {"database": db, "table_name": INDEX_STATE_TABLE,
                                  "legacy_table_names": False}),
        "__module__": __name__,
    }
    return type("IndexState", (peewee.Model,), attrs)
