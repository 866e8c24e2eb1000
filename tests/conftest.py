"""Shared fixtures: where the real MNIST files are, and a quiet temporary working directory."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def real_data_dir() -> Path | None:
    """``$LIPREG_DATA_DIR`` or ``../shared/datasets`` beside the repository, if it holds MNIST."""
    candidate = Path(os.environ.get("LIPREG_DATA_DIR") or REPO.parent / "shared" / "datasets")
    return candidate if (candidate / "MNIST" / "raw").is_dir() else None


@pytest.fixture
def data_dir() -> Path:
    """The real MNIST/Fashion-MNIST root. In CI (``CI=true``) a missing root fails, never skips."""
    found = real_data_dir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have the real datasets: set LIPREG_DATA_DIR or put shared/ beside the repo")
        pytest.skip("real MNIST files not found (set LIPREG_DATA_DIR)")
    return found


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in its own directory so ``lightning_logs/`` never lands in the repository."""
    monkeypatch.chdir(tmp_path)
