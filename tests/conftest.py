"""Shared fixtures: the real Omniglot zips, decoded once per session into a temporary cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# One intra-op thread in this process and every process it starts (CLI runs, Ray workers,
# SuperNodes): on a 2-core machine more threads only contend, and the spinning of idle
# OpenMP threads made some tests tens of times slower on a busy host.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from fedmeta.tasks.omniglot import (CACHE_ENV, DIR_ENV, OmniglotData, cache_dir,  # noqa: E402
                                     load_omniglot)

SHARED_OMNIGLOT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point ``FEDMETA_CACHE`` at a session folder, so no test touches the user's cache."""
    folder = tmp_path_factory.mktemp("fedmeta-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    """The folder of the shared Omniglot zips: ``$FEDMETA_OMNIGLOT_DIR``, else
    ``../shared/data/omniglot`` beside the checkout. Missing: fails on CI, else skips."""
    folder = Path(os.environ.get(DIR_ENV) or SHARED_OMNIGLOT)
    if not sorted(folder.glob("images_*.zip")):
        message = f"no Omniglot zips in {folder} (set {DIR_ENV})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder


@pytest.fixture(scope="session")
def omniglot_cache(private_cache: Path) -> Path:
    """The session's Omniglot cache folder, the default ``cache_dir()`` of every test."""
    return cache_dir()


@pytest.fixture(scope="session")
def omniglot_data(omniglot_dir: Path, omniglot_cache: Path) -> OmniglotData:
    """Every image of the shared zips, decoded once per session; its arrays are read-only."""
    data = load_omniglot(omniglot_dir, cache=omniglot_cache)
    for array in (data.images, data.alphabet, data.character, data.drawer):
        array.flags.writeable = False
    return data
