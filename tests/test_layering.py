"""The decoding core does no I/O: checked on its source (AST), never by importing it.

Core: siptrace/decode, siptrace/sip, siptrace/correlate, siptrace/extract.py,
siptrace/rows.py, siptrace/direction.py. It may import the standard library's pure
modules and its own core modules; no networking, files, processes, threads, clocks,
databases or capture libraries, and none of siptrace's edges (capture, store, mirror,
control, replay, cli). Clocks are injected: reassembly timeouts run on capture time.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "siptrace"
CORE_PACKAGES = ("decode", "sip", "correlate", "view")
CORE_MODULES = ("extract.py", "rows.py")
OPTIONAL_CORE_MODULES = ("direction.py", "timespec.py")

FORBIDDEN_MODULES = {
    # networking and event loops
    "socket": "networking", "ssl": "networking", "select": "networking",
    "selectors": "networking", "asyncio": "event loop", "http": "networking",
    "urllib": "networking",
    # files, processes, threads, signals
    "os": "OS I/O", "io": "file I/O", "pathlib": "file I/O", "shutil": "file I/O",
    "tempfile": "file I/O", "glob": "file I/O", "mmap": "file I/O", "fcntl": "file I/O",
    "sys": "interpreter I/O (stdout, argv)", "logging": "I/O (log handlers)",
    "subprocess": "processes", "multiprocessing": "processes", "signal": "signals",
    "threading": "threads", "_thread": "threads", "concurrent": "threads/processes",
    "time": "wall clock (inject the clock; timeouts run on capture time)",
    "importlib": "dynamic imports",
    # databases, capture libraries, user interface
    "sqlite3": "database", "peewee": "database", "playhouse": "database",
    "psycopg": "database", "psycopg2": "database", "pymysql": "database", "MySQLdb": "database",
    "scapy": "capture library", "pyshark": "capture library", "dpkt": "capture library",
    "typer": "user interface", "click": "user interface",
}
EDGE_PACKAGES = {
    "siptrace.capture": "packet sources", "siptrace.store": "storage",
    "siptrace.mirror": "mirroring", "siptrace.control": "control sockets",
    "siptrace.replay": "the replay engine", "siptrace.cli": "the command line",
}
IO_BUILTINS = {"open": "file I/O", "print": "stdout", "input": "stdin",
               "__import__": "dynamic imports", "exec": "dynamic code", "eval": "dynamic code"}


def core_modules() -> list[Path]:
    modules = []
    for name in CORE_PACKAGES:
        modules += sorted((PACKAGE / name).rglob("*.py"))
    for name in CORE_MODULES + OPTIONAL_CORE_MODULES:
        if (PACKAGE / name).is_file():
            modules.append(PACKAGE / name)
    return modules


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.AST, this_module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the tree, nested ones included."""
    package = this_module if is_package else this_module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from siptrace import store` imports the edge module itself.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names
                      if f"{target}.{alias.name}" in EDGE_PACKAGES]
    return found


def violations(source: str, this_module: str, is_package: bool = False) -> list[str]:
    """Every forbidden import or I/O builtin call in one module's source."""
    tree = ast.parse(source)
    found = []
    for line, name in imported_names(tree, this_module, is_package):
        top = name.split(".")[0]
        if top in FORBIDDEN_MODULES:
            found.append(f"{this_module}:{line} imports {name} ({FORBIDDEN_MODULES[top]})")
        for edge, what in EDGE_PACKAGES.items():
            if name == edge or name.startswith(edge + "."):
                found.append(f"{this_module}:{line} imports {name} ({what}: an edge)")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in IO_BUILTINS):
            found.append(f"{this_module}:{node.lineno} calls {node.func.id}() "
                         f"({IO_BUILTINS[node.func.id]})")
    return found


def test_core_is_where_the_architecture_says():
    for name in CORE_PACKAGES:
        assert (PACKAGE / name / "__init__.py").is_file(), f"siptrace/{name}/ is missing"
    for name in CORE_MODULES:
        assert (PACKAGE / name).is_file(), f"siptrace/{name} is missing"


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_core_module_does_no_io(path: Path):
    try:
        found = violations(path.read_text(encoding="utf-8"), module_name(path),
                           is_package=path.name == "__init__.py")
    except SyntaxError as exc:
        pytest.fail(f"{module_name(path)} does not parse: {exc}")
    assert not found, "the decoding core must not do I/O:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("import socket", "imports socket (networking)"),
    ("import os.path", "imports os.path (OS I/O)"),
    ("from scapy.all import rdpcap", "imports scapy.all (capture library)"),
    ("def f():\n    import peewee", "imports peewee (database)"),
    ("from psycopg import sql", "imports psycopg (database)"),
    ("from time import monotonic", "imports time (wall clock"),
    ("from ..store import schema", "imports siptrace.store (storage: an edge)"),
    ("from siptrace import capture", "imports siptrace.capture (packet sources: an edge)"),
    ("from . import threading_free", None),
    ("from ..errors import DecodeError", None),
    ("import struct, collections", None),
    ("open('x')", "calls open() (file I/O)"),
    ("print(1)", "calls print() (stdout)"),
])
def test_checker_flags_each_kind_of_violation(source, expected):
    found = violations(source, "siptrace.decode.example")
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0], found
