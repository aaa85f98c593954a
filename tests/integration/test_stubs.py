"""The committed gRPC stubs are what the .proto files generate."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO


def test_generated_stubs_are_fresh(tmp_path):
    pytest.importorskip("grpc_tools")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen-proto"), str(out)], check=True, cwd=REPO,
        env={**os.environ, "PYTHON": sys.executable},
    )
    generated = sorted(p.relative_to(out) for p in out.rglob("*.py*"))
    assert generated, "protoc generated nothing"
    stale = [str(p) for p in generated if (out / p).read_bytes() != (REPO / p).read_bytes()]
    assert stale == [], f"stale stubs (run scripts/gen-proto and commit): {stale}"
    shutil.rmtree(out)
