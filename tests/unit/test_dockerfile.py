"""No Docker engine runs here, so the Dockerfile is checked against the real install steps."""

from __future__ import annotations

import re
import shlex

from semcache_server.cli import build_parser
from tests.helpers import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions():
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, rest))
    return stages


def test_multi_stage_slim_python_311_base():
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, re.M))
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    stages = _stages()
    assert len(stages) >= 2
    assert all(stage[0][1].split()[0] == "${PYTHON_IMAGE}" for stage in stages)


def test_installs_with_the_same_script_as_the_readme_and_ci():
    build_runs = [rest for keyword, rest in _stages()[0] if keyword == "RUN"]
    assert any("scripts/install-deps" in run for run in build_runs)
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert commands == ["./scripts/serve", "./scripts/check"]
    for script in ("serve", "test", "check"):
        assert "install-deps" in (REPO / "scripts" / "_venv.sh").read_text()
        assert "ensure_venv" in (REPO / "scripts" / script).read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "./scripts/check" in ci


def test_every_file_the_install_needs_is_copied():
    copied = set()
    for keyword, rest in _stages()[0]:
        if keyword == "COPY" and not rest.startswith("--from"):
            copied.update(shlex.split(rest)[:-1])
    pyproject = (REPO / "pyproject.toml").read_text()
    needed = {"pyproject.toml", "scripts/install-deps", "semcache_server"}
    if 'readme = "README.md"' in pyproject:
        needed.add("README.md")
    assert needed <= copied, needed - copied
    for path in copied:
        assert (REPO / path).exists(), path


def test_torch_is_pinned_to_one_cpu_release_everywhere():
    script = (REPO / "scripts" / "install-deps").read_text()
    (version,) = re.findall(r'TORCH_VERSION="([\d.]+)"', script)
    assert 'pip install --quiet "torch==${TORCH_VERSION}"' in script
    assert f"torch=={version}" in (REPO / "README.md").read_text()
    # torch goes in before the package, so sentence-transformers cannot pull a CUDA build.
    assert script.index("torch==") < script.index('install --quiet $editable')


def test_runtime_stage_is_a_non_root_sidecar_with_a_grpc_healthcheck():
    runtime = _stages()[-1]
    keywords = dict(runtime)
    user = keywords["USER"]
    assert user not in ("root", "0")
    env = keywords["ENV"]
    assert "SEMCACHE_LISTEN=0.0.0.0:50051" in env and "SEMCACHE_DATA_DIR=/data" in env
    assert "HF_HUB_OFFLINE=1" in env  # nothing downloaded at run time
    assert "/data" in keywords["VOLUME"]
    assert keywords["EXPOSE"] == "50051"
    healthcheck = keywords["HEALTHCHECK"]
    assert '"semcache", "health"' in healthcheck and "50051" in healthcheck
    assert keywords["ENTRYPOINT"] == '["semcache"]' and keywords["CMD"] == '["serve"]'
    # The health subcommand the HEALTHCHECK runs exists, with the flags it passes.
    args = build_parser().parse_args(["health", "--address", "127.0.0.1:50051", "--timeout-seconds", "3"])
    assert args.command == "health"
