"""Shared fixtures: the embedded data, the full shared data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fvtool.settings import EMBEDDED_DATA, shared_data_root
from fvtool.workspace import set_workspace_override

# `--log auto` (the default) would write TensorBoard events in every training test: ~3 s to import
# tensorboard per process and ~0.2 s per DET figure. Tests that check the log ask for it explicitly.
# Set here, not in a fixture, so that module-scoped fixtures and spawned processes see it too.
os.environ.setdefault("FVTOOL_AUTO_TENSORBOARD", "0")

# Per-test time limits (pytest-timeout): 900 s by default (pyproject.toml); the end-to-end tests
# (demo, example scripts, multi-process training) mark their own, sized for a loaded machine. A slower
# or busier machine multiplies every limit with FVTOOL_TEST_TIMEOUT_SCALE (a `timeout` marker would
# otherwise win over the `--timeout` option).


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    scale = float(os.environ.get("FVTOOL_TEST_TIMEOUT_SCALE", "1") or 1)
    if scale == 1:
        return
    default = float(config.getoption("timeout", None) or config.getini("timeout") or 0)
    for item in items:
        m = item.get_closest_marker("timeout")
        given = None if m is None else (m.args[0] if m.args else m.kwargs.get("timeout"))
        base = default if given is None else float(given)
        if base > 0:
            item.add_marker(pytest.mark.timeout(base * scale), append=False)


@pytest.fixture(scope="session")
def embedded_data() -> Path:
    """data/lfw-subset: 158 identities x 10 real LFW images, always present."""
    assert EMBEDDED_DATA.is_dir(), f"embedded data missing at {EMBEDDED_DATA}"
    return EMBEDDED_DATA


def _shared(*parts: str) -> Path:
    p = shared_data_root().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"full data not found at {p} (set FVTOOL_DATA to the folder holding lfw-deepfunneled/, "
                    "lfw-protocol/, att_faces/)")
    return p


@pytest.fixture(scope="session")
def lfw_full() -> Path:
    return _shared("lfw-deepfunneled")


@pytest.fixture(scope="session")
def lfw_protocol_dir() -> Path:
    return _shared("lfw-protocol")


@pytest.fixture(scope="session")
def att_faces() -> Path:
    return _shared("att_faces")


@pytest.fixture(autouse=True)
def _isolated_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never write into the developer's ./fvwork."""
    monkeypatch.setenv("FVTOOL_WORKSPACE", str(tmp_path / "fvwork"))
    set_workspace_override(None)  # `fvtool --workspace` in an in-process CLI test must not leak
    yield
    # an in-process `main()` sets the override from $FVTOOL_WORKSPACE: clear it, or the next module's
    # module-scoped fixtures (set up before this fixture runs again) would write into this test's workspace
    set_workspace_override(None)


@pytest.fixture
def one_thread():
    """One torch thread for the test (modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`).

    Why: on a shared 2-core machine two OpenMP workers fighting for cores are several times slower
    than one for the small networks these tests run.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
