"""The README's Python example and shell commands work against a real server."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from tests.helpers import REPO


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_python_example_runs(make_server, embedder, capsys):
    server, _ = make_server(embedder=embedder, min_similarity=0.92)
    code = _blocks("python")[0].replace("127.0.0.1:50051", f"127.0.0.1:{server.port}")
    asked = []

    def ask_llm(question: str) -> str:
        asked.append(question)
        return "Go to Settings > Account."

    exec(compile(code, "README.md", "exec"), {"ask_llm": ask_llm})
    printed = capsys.readouterr().out
    assert printed.startswith("True 0.99") and "Forgot password" in printed
    assert asked == ["How do I change my email address?"]


def test_shell_example_runs(make_server, embedder):
    server, _ = make_server(embedder=embedder, min_similarity=0.92)
    shell = _blocks("bash")[1]
    commands = [line for line in shell.splitlines() if line.startswith(".venv/bin/semcache")]
    assert len(commands) == 3
    outputs = []
    for line in commands:
        args = line.split(maxsplit=1)[1]
        result = subprocess.run(
            f"{sys.executable} -m semcache_server {args} --address 127.0.0.1:{server.port}",
            shell=True, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(json.loads(result.stdout))
    stored, found, stats = outputs
    assert found["hit"] and found["entry_id"] == stored["entry_id"]
    assert found["response"] == "Click 'Forgot password'."
    assert stats["hits"] == "1" and stats["saved_cost"] == 0.002
