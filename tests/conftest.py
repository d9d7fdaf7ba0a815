"""Shared test set-up: command-line options, the skip guard that keeps CI honest, and the fixtures
used by several modules (one torch thread, the tiny stand-in corpus).

Options (``python -m pytest -q`` runs everything, the slow tests included):

* ``--fast``: deselect the tests marked ``slow`` (minutes on a CPU) for quick local work.
* ``--strict-skips`` (on by default when ``CI=true``): any skipped test that does not carry the
  ``gpu`` marker (CUDA, pytorch3d: hardware or packages a CPU machine cannot have) fails the
  session. A test that skips because, say, ``mediapipe`` stopped importing or ``../shared/real``
  is missing would otherwise leave CI green while proving nothing. All skips are listed with their
  reasons at the end of the run either way.

Pytest's own exit code 5 (no test collected) is passed through by ``.ci/run`` as a failure.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest
import torch

REAL_MEDIA = Path(__file__).resolve().parents[1] / ".." / "shared" / "real"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("talkinghead")
    group.addoption("--fast", action="store_true", help="deselect tests marked slow (local work)")
    group.addoption("--strict-skips", action="store_true",
                    help="fail the session on any skip not marked gpu (default when CI=true)")


def _strict(config: pytest.Config) -> bool:
    return bool(config.getoption("--strict-skips")) or os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config._th_skips = []  # [(nodeid, reason, is_gpu)]
    if "mutmut" in sys.modules:
        _warm_mutmut_fork_server()


def _warm_mutmut_fork_server() -> None:
    """Under mutmut (pyproject's ``[tool.mutmut]``) each mutant's tests run in a process forked
    from one that has collected them. Import there what torch otherwise loads on first use, ~4 s
    each on this machine (the compiler stack that building an optimizer imports; the DTensor types
    ``torch.testing.assert_close`` checks for), and freeze the heap so that the garbage collector
    in each forked process does not walk it again: 0.5 s instead of 8 s per mutant."""
    import torch._dynamo  # noqa: F401
    import torch.distributed.tensor  # noqa: F401

    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--fast"):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        item.config._th_skips.append((item.nodeid, reason, item.get_closest_marker("gpu") is not None))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _strict(session.config):
        return
    unexpected = [s for s in session.config._th_skips if not s[2]]
    if unexpected and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skips = config._th_skips
    if not skips:
        return
    strict = _strict(config)
    terminalreporter.section(f"skipped tests ({len(skips)})")
    for nodeid, reason, is_gpu in skips:
        tag = "gpu" if is_gpu else ("NOT ALLOWED" if strict else "skip")
        terminalreporter.write_line(f"[{tag}] {nodeid}: {reason}")
    bad = sum(not s[2] for s in skips)
    if strict and bad:
        terminalreporter.write_line(
            f"strict skips: {bad} test(s) skipped without the gpu marker -> the session fails "
            "(fix the missing package or data, or mark the test gpu if it needs CUDA/pytorch3d)", red=True)


# --------------------------------------------------------------------------------------------
# Shared fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's models on one thread: on a shared, oversubscribed CPU, intra-op thread
    barriers cost far more than they save (about 7x the wall time here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def real_media() -> Path:
    """``../shared/real`` (real talking-face video and speech); skips when the folder is absent."""
    if not REAL_MEDIA.is_dir():
        pytest.skip(f"real media not found at {REAL_MEDIA.resolve()} (a fresh clone does not have them)")
    return REAL_MEDIA.resolve()
