"""The README's Quickstart runs as written: every shell block in order, in one shell, in a scratch folder.

The one substitution: the default ports 8470 (server) and 8471 (agent API) become free loopback ports.
A block preceded by ``<!-- not run here: REASON -->`` is skipped (the reason is required). The first
failing command fails the test, naming its block and line; every process the blocks started is stopped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```sh\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
SKIP = re.compile(r"<!-- not run here: (?P<reason>.*\S)\s*-->\s*$")
PORTS = ("8470", "8471")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    skip_reason: str | None


def shell_blocks(markdown: str) -> list[Block]:
    """Every ```sh block with its line and, when the line above marks it, why it is not run."""
    blocks = []
    for match in FENCE.finditer(markdown):
        before = markdown[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = markdown.count("\n", 0, match.start()) + 1
        blocks.append(Block(line, match.group(1), skip.group("reason") if skip else None))
    return blocks


def script(blocks: list[Block], ports: dict[str, str]) -> str:
    """One bash script of the runnable blocks: stops at the first failure, naming block and line."""
    parts = [
        "set -euo pipefail",
        "trap 'echo \"README block failed: $BASH_COMMAND\" >&2' ERR",
        "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT",
    ]
    for block in blocks:
        if block.skip_reason is not None:
            continue
        code = block.code
        for default, port in ports.items():
            code = code.replace(default, port)
        parts += [f"echo '>>> README.md line {block.line}' >&2", code]
    return "\n".join(parts) + "\n"


def test_every_readme_shell_block_runs_or_says_why_not() -> None:
    """Each block is runnable or marked with a reason; the marked ones are the few that need a real host."""
    blocks = shell_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 8
    skipped = [b for b in blocks if b.skip_reason is not None]
    assert 0 < len(skipped) <= 2, [b.line for b in skipped]
    assert any("systemctl" in b.code for b in skipped)
    assert "./run demo" in blocks[0].code and "./run test" in blocks[0].code


def test_readme_quickstart_runs_in_order(tmp_path: Path) -> None:
    """Server init/run, keys, v1, store and agent, forecasts, a week of sales, accuracy, v2, canary, abort."""
    blocks = shell_blocks((ROOT / "README.md").read_text())
    text = script(blocks, {default: str(free_port()) for default in PORTS})
    (tmp_path / "quickstart.sh").write_text(text)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHELFCAST_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(
        ["bash", "quickstart.sh"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    logs = "".join(f"\n--- {p.name} ---\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))
    assert proc.returncode == 0, output[-6000:] + logs
    assert "README block failed" not in output


DOCS = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "systemd" / "README.md"])


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_docs_shell_blocks_run_or_say_why_not(doc: Path, tmp_path: Path) -> None:
    """Each shell block of the docs runs on its own (in a scratch folder) or is marked with its reason."""
    for block in shell_blocks(doc.read_text()):
        if block.skip_reason is not None:
            continue
        folder = tmp_path / f"line-{block.line}"
        folder.mkdir()
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            cwd=folder, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{doc.name} line {block.line}: {result.stderr[-3000:]}"
