"""Settings from the INI file, the environment and the command line."""

import pytest

from siptrace.config import KEYS, MAX_TABLE_NAME, Settings, load_settings
from siptrace.redact import redact, redact_url
from siptrace.direction import ProxyAddresses
from siptrace.errors import ConfigError

FULL = """\
[siptrace]
db_url = mysql://siptrace:s3cret@db.example.com:3306/siptrace
table = strace
trace_flag = 22
trace_on = on
traced_user_avp = 123
duplicate_uri = sip:10.1.1.1:5888, hep:homer.example.com:9060
interface = eth0, eth1
proxy = 10.0.0.1:5060 [::1]:5060
decision_socket = /run/kamailio/decisions.sock
control_socket = /run/siptrace/ctl.sock
record_decisions = /var/log/siptrace/decisions.jsonl
grace = 500ms
hep_capture_id = 2001
hep_auth_key = myHep%Key
hep_listen = udp:0.0.0.0:9060, tcp:[::1]:9061
spool_dir = /var/spool/siptrace
spool_max_bytes = 2G
stream_buffer_bytes = 32M
decision_buffer_bytes = 8M
trace_all = no
call_index = off
web_listen = [::1]:8443
web_user = noc
web_password = w3b s3cret
"""


def write(tmp_path, text, name="siptrace.ini"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_modules():
    s = load_settings(None, env={}, cli_overrides={})
    assert s == Settings()
    assert (s.db_url, s.table, s.trace_flag, s.trace_on, s.traced_user_avp) == \
        ("sqlite:///siptrace.db", "sip_trace", 0, False, 6843)
    assert s.decision_socket == "/run/siptrace/decisions.sock"
    assert s.control_socket == "/run/siptrace/control.sock"
    assert s.grace_ns == 2_000_000_000


def test_every_key_from_the_file(tmp_path):
    s = load_settings(write(tmp_path, FULL), env={})
    assert s.db_url == "mysql://siptrace:s3cret@db.example.com:3306/siptrace"
    assert (s.table, s.trace_flag, s.trace_on, s.traced_user_avp) == ("strace", 22, True, 123)
    assert s.duplicate_uri == ("sip:10.1.1.1:5888", "hep:homer.example.com:9060")
    assert s.interface == ("eth0", "eth1")
    assert s.proxy_addresses == ProxyAddresses.parse(["10.0.0.1:5060", "[::1]:5060"])
    assert s.grace == 0.5 and s.grace_ns == 500_000_000
    assert s.hep_auth_key == "myHep%Key"  # no interpolation of %
    assert s.hep_listen == ("udp:0.0.0.0:9060", "tcp:[::1]:9061")
    assert s.spool_max_bytes == 2 << 30 and s.trace_all is False
    assert s.stream_buffer_bytes == 32 << 20 and s.decision_buffer_bytes == 8 << 20
    assert set(KEYS) == {line.split(" =")[0] for line in FULL.splitlines()[1:]}


def test_precedence_file_then_environment_then_command_line(tmp_path):
    path = write(tmp_path, "[siptrace]\ntrace_flag = 1\ntable = from_file\ntrace_on = 0\n")
    env = {"SIPTRACE_TRACE_FLAG": "2", "SIPTRACE_TRACE_ON": "yes", "SIPTRACE_TABLE": ""}
    s = load_settings(path, env=env, cli_overrides={"trace_flag": 3, "table": None})
    assert (s.trace_flag, s.trace_on, s.table) == (3, True, "from_file")


def test_config_path_from_the_environment(tmp_path):
    path = write(tmp_path, "[siptrace]\ntable = t2\n")
    assert load_settings(None, env={"SIPTRACE_CONFIG": str(path)}).table == "t2"


@pytest.mark.parametrize("text, expected", [
    ("1", True), ("0", False), ("ON", True), ("off", False), ("Yes", True), ("no", False),
    ("true", True), ("FALSE", False)])
def test_trace_on_words(text, expected):
    assert load_settings(None, env={"SIPTRACE_TRACE_ON": text}).trace_on is expected


@pytest.mark.parametrize("env, cli, trace_on", [
    ({}, {"trace_all": True}, True),
    ({"SIPTRACE_TRACE_ALL": "1"}, {}, True),
    ({}, {"trace_all": True, "trace_on": "0"}, False),
    ({"SIPTRACE_TRACE_ON": "off"}, {"trace_all": True}, False),
    ({}, {}, False),
])
def test_trace_all_turns_tracing_on_unless_trace_on_is_given(env, cli, trace_on):
    assert load_settings(None, env=env, cli_overrides=cli).trace_on is trace_on


def test_command_line_values_typer_hands_over():
    s = load_settings(None, env={}, cli_overrides={
        "interface": ["eth0", "eth1,lo", "eth0"], "trace_on": True, "grace": 1.5,
        "proxy": ["10.0.0.1"], "duplicate_uri": "sip:10.1.1.1"})
    assert s.interface == ("eth0", "eth1", "lo") and s.trace_on is True
    assert s.grace == 1.5 and s.proxy == ("10.0.0.1",)
    assert s.duplicate_uri == ("sip:10.1.1.1",)


def test_bad_value_in_the_file_names_key_value_and_file(tmp_path):
    path = write(tmp_path, "[siptrace]\ntrace_flag = abc\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"trace_flag: 'abc' is not an integer (from {path})"


def test_bad_value_in_the_environment():
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"SIPTRACE_TRACE_ON": "maybe"})
    assert str(info.value) == ("trace_on: 'maybe' is not 0/1, on/off, yes/no or true/false "
                               "(from environment variable SIPTRACE_TRACE_ON)")


@pytest.mark.parametrize("key, value, message", [
    ("trace_flag", 32, "trace_flag: '32' is out of range (0..31) (from --trace-flag)"),
    ("trace_flag", "-1", "trace_flag: '-1' is out of range (0..31) (from --trace-flag)"),
    ("traced_user_avp", "x", "traced_user_avp: 'x' is not an integer (from --traced-user-avp)"),
    ("table", "public.sip_trace", "table: 'public.sip_trace' has a '.' (schema.table is not "
                                  "supported: the name is quoted whole) (from --table)"),
    ("grace", "0", "grace: '0' is out of range (0..60 s) (from --grace)"),
    ("grace", "soon", "grace: 'soon' is not a duration in seconds (e.g. 2, 0.5, 500ms) "
                      "(from --grace)"),
    ("proxy", "proxy.example.com", "proxy: 'proxy.example.com' is not IP, IP:PORT or "
                                   "[IPv6]:PORT (from --proxy)"),
    ("proxy", ["10.0.0.1", "10.0.0.2:x"], "proxy: '10.0.0.1 10.0.0.2:x' has '10.0.0.2:x', "
                                          "which is not IP, IP:PORT or [IPv6]:PORT (from --proxy)"),
    ("duplicate_uri", "udp:10.0.0.1", "duplicate_uri: 'udp:10.0.0.1' is not sip:host[:port] "
                                      "or hep:host[:port] (from --duplicate-uri)"),
    ("spool_max_bytes", "lots", "spool_max_bytes: 'lots' is not a size in bytes (e.g. "
                                "1073741824, 512M, 2G) (from --spool-max-bytes)"),
    ("decision_socket", " ", "decision_socket: ' ' is empty (from --decision-socket)"),
    ("hep_capture_id", 2**32, "hep_capture_id: '4294967296' is out of range (0..4294967295) "
                              "(from --hep-capture-id)"),
])
def test_bad_command_line_values(key, value, message):
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={}, cli_overrides={key: value})
    assert str(info.value) == message


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "[siptrace]\ntrace_flags = 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(info.value) == f"trace_flags: unknown key (from {path}); did you mean trace_flag?"


@pytest.mark.parametrize("text, message", [
    ("[siptrace]\n[mirror]\nx = 1\n", "unknown section [mirror]"),
    ("[DEFAULT]\ntable = t\n", "unknown section [DEFAULT]"),
    ("table = t\n", "File contains no section headers."),
    ("[other]\n", "unknown section [other]"),
    ("", "has no [siptrace] section"),
    ("[siptrace]\ntable = a\ntable = b\n", "option 'table' in section 'siptrace' already exists"),
])
def test_malformed_files(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(path, env={})


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read .*nope.ini: No such file"):
        load_settings(tmp_path / "nope.ini", env={})
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[siptrace]\ntable = caf\xe9\n")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        load_settings(path, env={})


def test_unrelated_environment_variables_are_ignored():
    assert load_settings(None, env={"SIPTRACE_FOO": "1", "PATH": "/bin"}) == Settings()


def test_passwords_never_show_in_repr_str_public_or_errors(tmp_path):
    s = load_settings(write(tmp_path, FULL), env={})
    for text in (repr(s), str(s), str(s.public())):
        assert "s3cret" not in text and "myHep" not in text
        assert "mysql://siptrace:***@db.example.com:3306/siptrace" in text
    assert s.public()["hep_auth_key"] == "***"
    with pytest.raises(ConfigError) as info:
        load_settings(None, env={"SIPTRACE_DB_URL": "mysql:/root:s3cret@db/x"})
    assert "s3cret" not in str(info.value) and "db/x" in str(info.value)


@pytest.mark.parametrize("url, shown", [
    ("mysql://u:pw@h/db", "mysql://u:***@h/db"),
    ("postgres://u:p@ss:w@h:5432/db", "postgres://u:***@h:5432/db"),
    ("postgresql://h/db?user=u&password=pw&sslmode=require",
     "postgresql://h/db?user=u&password=***&sslmode=require"),
    ("sqlite:///siptrace.db", "sqlite:///siptrace.db"),
    ("mysql://u@h/db", "mysql://u@h/db"),
    ("mysql://u:pa ss/w#x?y@h/db", "mysql://u:***@h/db"),  # malformed: up to the last '@'
    ("mysql://u:p/w@h", "mysql://u:***@h"),
    ("mysql://a b/c@h/db", "mysql://***@h/db"),
    ("sqlite:////var/a@b.db", "sqlite:////var/a@b.db"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_walks_status_values():
    status = {"db_url": "mysql://u:pw@h/db", "errors": ["cannot reach postgres://a:b@c/d"],
              "hep_auth_key": "k", "n": 3}
    assert redact(status) == {"db_url": "mysql://u:***@h/db",
                              "errors": ["cannot reach postgres://a:***@c/d"],
                              "hep_auth_key": "***", "n": 3}


# -- one rule per kind of value, shared with the code that uses it ------------------------

@pytest.mark.parametrize("text, seconds", [
    ("2", 2.0), ("0.5", 0.5), ("500ms", 0.5), ("2s", 2.0), ("0.5s", 0.5), ("1s500ms", 1.5),
    ("60", 60.0), ("1m", 60.0), ("0.001", 0.001)])
def test_grace_is_a_duration_as_everywhere_or_seconds_alone(text, seconds):
    assert load_settings(None, env={"SIPTRACE_GRACE": text}).grace == seconds


@pytest.mark.parametrize("text, says", [
    ("0", "is out of range"), ("0ms", "is out of range"), ("61", "is out of range"),
    ("1m1s", "is out of range"), ("-1", "is not a duration"), ("1.5.2", "is not a duration"),
    (".5", "is not a duration"), ("2x", "is not a duration")])
def test_bad_grace(text, says):
    with pytest.raises(ConfigError, match=says):
        load_settings(None, env={"SIPTRACE_GRACE": text})


def test_defaults_have_one_home():
    """Settings' defaults are the ones the correlator and the command line use."""
    from siptrace.correlate.correlator import Correlator

    correlator = Correlator()
    assert correlator.avp_key == str(Settings.traced_user_avp)
    assert correlator.grace_ns == Settings().grace_ns


LONGEST = "t" * MAX_TABLE_NAME
TABLE_NAMES_ACCEPTED = ["sip_trace", "strace", "sip trace-2024", "SipTrace$2", "2024_trace",
                        LONGEST]
TABLE_NAMES_REFUSED = {
    "public.sip_trace": "has a '.'",
    'sip"trace': "is not a table name",
    "sip`trace": "is not a table name",
    "sip%strace": "is not a table name",  # %s: the drivers' placeholder
    "sip\ttrace": "is not a table name",
    "sip\ntrace": "is not a table name",
    "tr\u00e4ce": "is not a table name",
    LONGEST + "t": f"is longer than {MAX_TABLE_NAME} characters",
}


@pytest.mark.parametrize("name", TABLE_NAMES_ACCEPTED)
def test_table_names_the_settings_and_the_store_accept(name):
    from siptrace.store.schema import check_table_name as store_rule

    assert load_settings(None, env={}, cli_overrides={"table": name}).table == name
    assert store_rule(name) == name


@pytest.mark.parametrize("name, says", TABLE_NAMES_REFUSED.items())
def test_table_names_the_settings_and_the_store_refuse_alike(name, says):
    from siptrace.store.schema import check_table_name as store_rule

    with pytest.raises(ConfigError) as store:
        store_rule(name)
    assert says in str(store.value) and str(store.value).startswith(f"table: {name!r} ")
    with pytest.raises(ConfigError) as settings:
        load_settings(None, env={}, cli_overrides={"table": name})
    assert str(settings.value) == f"{store.value} (from --table)"


def test_every_name_derived_from_the_longest_table_name_fits_the_databases():
    """PostgreSQL cuts identifiers at 63 bytes (two index names could then clash),
    MySQL refuses more than 64: the table name's bound leaves room for all of them."""
    import peewee

    from siptrace.store.schema import calls_model, trace_model

    db = peewee.PostgresqlDatabase(None)
    names = []
    for model in (trace_model(db, LONGEST), calls_model(db, LONGEST)):
        names.append(model._meta.table_name)
        names += [index._name for index in model._meta.indexes]
    assert len(names) == 10 and max(len(n.encode()) for n in names) == 63


class _Accepted(Exception):
    """A command got past its settings: the table name was accepted."""


@pytest.fixture
def commands(monkeypatch):
    """run, replay, show and calls as the command line runs them, each stopped once it
    has its settings."""
    import siptrace.commands
    import siptrace.reading
    import siptrace.sidecar

    def accepted(settings, *args, **kwargs):
        raise _Accepted(settings.table)

    monkeypatch.setattr(siptrace.sidecar, "Sidecar", accepted)
    monkeypatch.setattr(siptrace.commands, "replay_command", lambda files, settings, **kw:
                        accepted(settings))
    monkeypatch.setattr(siptrace.reading, "show_command", accepted)
    monkeypatch.setattr(siptrace.reading, "calls_command", accepted)
    return {"run": ["run"], "replay": ["replay", "x.pcap"], "show": ["show"], "calls": ["calls"]}


def invoke(args):
    from typer.testing import CliRunner

    from siptrace.cli import app

    return CliRunner().invoke(app, args, env={"SIPTRACE_CONFIG": ""})


@pytest.mark.parametrize("name", TABLE_NAMES_ACCEPTED + list(TABLE_NAMES_REFUSED))
def test_run_replay_show_and_calls_take_the_same_table_names(commands, name):
    outcomes = {}
    for command, args in commands.items():
        result = invoke([*args, "--table", name])
        assert isinstance(result.exception, (_Accepted, ConfigError)), (command, result.output)
        outcomes[command] = str(result.exception)
    assert len(set(outcomes.values())) == 1, outcomes
    if name in TABLE_NAMES_ACCEPTED:
        assert outcomes["run"] == name
    else:
        assert outcomes["run"].startswith(f"table: {name!r} ")


def test_a_table_name_needing_quotes_from_replay_to_calls(tmp_path):
    from conftest import PCAPS

    db_url = f"sqlite:///{tmp_path / 't.db'}"
    table = "sip trace-2024"
    result = invoke(["replay", str(PCAPS / "kamailio-udp.pcap"), "--db-url", db_url,
                     "--table", table, "--no-progress"])
    assert result.exit_code == 0, result.output
    for command in ("show", "calls"):
        result = invoke([command, "--db-url", db_url, "--table", table, "--json"])
        assert result.exit_code == 0, result.output
        assert "1-" in result.output and "@127.0.0.1" in result.output
