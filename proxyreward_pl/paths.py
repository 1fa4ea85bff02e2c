"""Where the project's files are: the repository's SQL, prompts, seed data, and the default lake."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
SQL_DIR = REPO_ROOT / "datalake" / "sql"
SEED_DIR = REPO_ROOT / "datalake" / "seed"
# Prompt templates (a copy elsewhere, to change a prompt without touching the repository: every row records
# its template's hash, so lineage sees the change)
PROMPTS_DIR = Path(os.environ.get("PROXYREWARD_PROMPTS") or REPO_ROOT / "prompts")
CONFIGS_DIR = REPO_ROOT / "configs"
CACHE_DIR = Path(os.environ.get("PROXYREWARD_CACHE", REPO_ROOT / ".cache"))


def default_lake_root() -> Path:
    """`PROXYREWARD_LAKE` when set, else `datalake/` in the repository."""
    return Path(os.environ.get("PROXYREWARD_LAKE") or REPO_ROOT / "datalake")


def resolve_lake(lake: str | os.PathLike | None) -> Path:
    return Path(lake) if lake else default_lake_root()
