"""Shared test helpers: where the captures are, and tools that must be present in CI."""

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# A busy 2-core machine makes generation slow now and then: that is no failure.
settings.register_profile("siptrace", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("siptrace")

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"
REAL_PCAPS = REPO.parent / "shared" / "real-pcaps"
IN_CI = os.environ.get("CI", "").lower() == "true"

pytest_plugins = ["storefixtures", "clickhousefixtures"]


def missing(reason: str):
    """A tool, server or capture a test needs is absent: fail under CI, else skip."""
    if IN_CI:
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed")
    return path


def real_pcaps() -> list[Path]:
    """The third-party captures beside the checkout ([] when the folder is absent)."""
    if not REAL_PCAPS.is_dir():
        return []
    return sorted(p for p in REAL_PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))


@pytest.fixture
def real_pcaps_dir() -> Path:
    if not REAL_PCAPS.is_dir():
        missing(f"{REAL_PCAPS} is absent: the third-party captures are not beside the checkout")
    return REAL_PCAPS
