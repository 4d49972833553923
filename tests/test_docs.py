"""The policy snippets of README.md and docs/*.md load with tollway's own loader.

Every ```toml block is a whole policy document unless the line right before it is the HTML
comment ``<!-- fragment -->`` (a piece of a document shown on its own; it is still parsed as
TOML, so a typo in it fails too).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tollway.errors import PolicyError
from tollway.policy import loads

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "<!-- fragment -->"
_BLOCK = re.compile(r"^```toml\n(.*?)^```$", re.M | re.S)


def toml_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line, body, is_fragment) of each ```toml block."""
    blocks = []
    for match in _BLOCK.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text.count("\n", 0, match.start()) + 1
        blocks.append((line, match.group(1), before.strip() == FRAGMENT))
    return blocks


SNIPPETS = [
    pytest.param(body, fragment, id=f"{page.relative_to(ROOT)}:{line}")
    for page in PAGES
    for line, body, fragment in toml_blocks(page.read_text(encoding="utf-8"))
]


def test_the_docs_have_policy_snippets() -> None:
    assert len([s for s in SNIPPETS if not s.values[1]]) >= 3


@pytest.mark.parametrize(("body", "fragment"), SNIPPETS)
def test_policy_snippet_loads(body: str, fragment: bool) -> None:
    if fragment:
        tomllib.loads(body)
    else:
        loads(body, source="snippet")


def test_blocks_and_fragments_are_found() -> None:
    text = (
        "intro\n```toml\n[store]\nurl = 1\n```\n\n<!-- fragment -->\n```toml\nx = 1\n```\n"
        "```python\nnot = toml\n```\n"
    )
    assert toml_blocks(text) == [(2, "[store]\nurl = 1\n", False), (8, "x = 1\n", True)]
    with pytest.raises(PolicyError, match=r"store\.url"):
        loads(toml_blocks(text)[0][1])


def test_the_readme_quickstart_runs_as_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    policy = re.search(r"```toml\n(.*?)```", quickstart, re.S)
    assert policy is not None
    # the policy file's Python comes after it (the inline limits come first)
    code = re.search(r"```python\n(.*?)```", quickstart[policy.end() :], re.S)
    assert policy is not None and code is not None
    (tmp_path / "tollway.toml").write_text(policy.group(1), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    exec(compile(code.group(1), "README.md", "exec"), {})
    first, second = capsys.readouterr().out.splitlines()
    allowed, violated, retry_after = first.split(" ", 2)
    assert (allowed, violated) == ("False", "('burst',)")
    assert 0 < float(retry_after) <= 0.2
    assert second == "990"


def test_relative_links_point_at_files_that_exist() -> None:
    missing = []
    for page in [*PAGES, ROOT / "CONTRIBUTING.md"]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert missing == []


async def test_the_readme_inline_limit_runs_as_shown() -> None:
    """The quickstart's first block: a FastAPI route limited inline, driven over ASGI by httpx:
    a burst of 10 passes, and the requests right after it are refused with a 429."""
    import httpx

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", quickstart, re.S)
    assert code is not None and "limit(rate=" in code.group(1)
    scope: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), scope)
    transport = httpx.ASGITransport(app=scope["app"], client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        first = [(await http.get("/search", params={"q": "x"})).status_code for _ in range(10)]
        # 5/s refills one request per 200 ms: ten more in a row cannot all find room
        after = [(await http.get("/search", params={"q": "x"})).status_code for _ in range(10)]
    assert first == [200] * 10
    assert 429 in after
    assert set(after) <= {200, 429}
