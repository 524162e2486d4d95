"""The SDK's README, tested as written: every Python block runs against a fresh server with
WAFER_URL and WAFER_API_KEY set, from the repository root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO, Server

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_the_examples_the_issue_asks_for() -> None:
    text = "\n".join(blocks())
    assert 'fn = client.function("stress")' in text
    assert 'fn.execute({"force": 1000, "section": 10})' in text
    assert 'job = client.submit("stress", {"force": 1000, "section": 10})' in text
    assert 'job.wait().json() == {"stress": 100.0}' in text


@pytest.mark.parametrize("index", range(len(blocks())))
def test_readme_block_runs(index: int, make_server: type[Server], monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_server().start()
    monkeypatch.setenv("WAFER_URL", s.url)
    monkeypatch.setenv("WAFER_API_KEY", s.admin_key)
    monkeypatch.chdir(REPO)
    code = blocks()[index]
    if "client.submit(\"stress\"" in code and "client.deploy(" not in code:
        # Blocks after the first use the function the first one deployed.
        import wafer

        with wafer.Client() as c:
            c.deploy("stress", "functions/dist/stress.wasm", public=True)
    exec(compile(code, f"README.md block {index}", "exec"), {"__name__": "readme"})
