"""A tiny git + DVC repository in a test's tmp_path, for tests that read metrics at a git revision."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def git_dvc_repo(root: Path, monkeypatch) -> Path:
    """`git init` and `dvc init` in `root`, with git and DVC isolated from the user's config; nothing committed."""
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Metrics Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "metrics@example.com")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(root / ".dvc-site-cache"))
    git(root, "init", "-q")
    from dvc.repo import Repo

    Repo.init(str(root)).close()
    (root / ".gitignore").write_text("/.dvc-site-cache\n")
    return root


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def commit(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def write_json(path: Path, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2) + "\n")
