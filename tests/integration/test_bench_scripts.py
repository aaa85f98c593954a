"""Every bench script still runs: each in its --quick mode (a tiny run whose figures mean
nothing), so a change that breaks one fails here instead of silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPTS = sorted(p.name for p in (REPO / "bench").iterdir() if p.suffix in (".py", ".sh") and not p.name.startswith("_"))


def test_every_script_is_covered():
    assert "perf.py" in SCRIPTS and "run_accuracy.sh" in SCRIPTS and len(SCRIPTS) >= 14


def _last_json_object(stdout: str) -> dict:
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_runs_in_quick_mode(script, tmp_path):
    path = REPO / "bench" / script
    command = ["bash", str(path), "--quick"] if script.endswith(".sh") else [sys.executable, str(path), "--quick"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path),
           "SEMCACHE": str(Path(sys.executable).parent / "semcache")}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if script == "table.py":
        assert result.stdout.startswith("| data set |")
    else:
        assert _last_json_object(result.stdout)  # the figures, as JSON
