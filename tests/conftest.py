"""Shared fixtures: the real seed pages, the real bundled encoder (once per session), a built index."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
DATA = Path(__file__).resolve().parent / "data"
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="session")
def seeds_dir() -> Path:
    return SEEDS


@pytest.fixture(scope="session")
def articles():
    from rag.pipeline import load_articles

    return load_articles(SEEDS)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def encoder():
    """The real bundled encoder, loaded once for the session."""
    from rag.embed import get_encoder

    return get_encoder()


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, encoder) -> Path:
    """An index of the real seed pages, built once for the session."""
    from rag.pipeline import build_index

    path = tmp_path_factory.mktemp("idx") / "index"
    build_index(SEEDS, path)
    return path


@pytest.fixture(scope="session")
def engine(index_dir):
    from rag.pipeline import get_engine

    return get_engine(index_dir)


@pytest.fixture(scope="session")
def qa_items():
    from rag.evaluate import load_qa

    return load_qa(DATA / "qa.jsonl")


def run_cli(*args, stdin: str | None = None, env: dict | None = None, cwd: Path | None = None):
    """Run ``python -m rag`` as a user would; returns the CompletedProcess."""
    import subprocess
    import sys

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "rag", *args], input=stdin, capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)


def build_two_page_index(tmp_path: Path, **settings) -> tuple[Path, dict]:
    """An index of two small test pages (bom_page, gbk_page) built with these settings, and its manifest."""
    import json
    import shutil

    from rag.config import Settings
    from rag.pipeline import build_index

    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for name in ("bom_page.txt", "gbk_page.txt"):
        shutil.copy(DATA / "pages" / name, seeds / name)
    build_index(seeds, tmp_path / "index", settings=Settings.of(**settings))
    return seeds, json.loads((tmp_path / "index" / "manifest.json").read_text(encoding="utf-8"))
