"""The SDK's README, tested as written: every Python block runs against a fresh server with
WAFER_URL and WAFER_API_KEY set, from the repository root. An error example proves its
error: each ``print`` in an ``except`` clause must print what its ``# comment`` says, so a
block where nothing is raised fails."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

from conftest import REPO, Server

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def expected_prints(code: str) -> list[str]:
    """The output each ``print(...)  # output`` inside an ``except`` clause of ``code``
    promises, as patterns (``...`` stands for anything)."""
    lines = code.splitlines()
    found = []
    for handler in ast.walk(ast.parse(code)):
        if not isinstance(handler, ast.ExceptHandler):
            continue
        prints = [
            n
            for n in ast.walk(handler)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
        assert prints, f"the except clause at line {handler.lineno} prints nothing to check"
        for call in prints:
            _, _, comment = lines[call.lineno - 1].partition("#")
            assert comment.strip(), f"print at line {call.lineno} has no '# expected output' comment"
            found.append(".*".join(re.escape(part) for part in comment.strip().split("...")))
    return found


def run_block(code: str, name: str) -> None:
    """Runs ``code``; fails unless each error example's ``print`` printed what it promises."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, name, "exec"), {"__name__": "readme"})
    printed = out.getvalue().splitlines()
    for pattern in expected_prints(code):
        assert any(re.fullmatch(pattern, line) for line in printed), f"{name}: nothing printed matches {pattern!r}; printed {printed!r}"


def test_the_readme_has_the_examples_the_issue_asks_for() -> None:
    text = "\n".join(blocks())
    assert 'fn = client.function("stress")' in text
    assert 'fn.execute({"force": 1000, "section": 10})' in text
    assert 'job = client.submit("stress", {"force": 1000, "section": 10})' in text
    assert 'job.wait().json() == {"stress": 100.0}' in text


def test_an_error_example_that_raises_nothing_fails() -> None:
    example = "try:\n    pass\nexcept ValueError as e:\n    print(e)   # boom\n"
    with pytest.raises(AssertionError, match="nothing printed matches"):
        run_block(example, "example")
    wrong = "try:\n    raise ValueError('bang')\nexcept ValueError as e:\n    print(e)   # boom\n"
    with pytest.raises(AssertionError, match="nothing printed matches"):
        run_block(wrong, "example")
    run_block("try:\n    raise ValueError('boom 7')\nexcept ValueError as e:\n    print(e)   # boom ...\n", "example")


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
    run_block(code, f"README.md block {index}")
