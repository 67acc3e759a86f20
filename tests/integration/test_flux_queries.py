"""The Flux queries of docs/queries.md, type-checked by the Flux language server.

No InfluxDB with a Flux engine can be installed here (Debian's influxdb is 1.6.7, before Flux;
PyPI and npm carry no InfluxDB server), so the queries cannot run against data. What is checked
instead: each parses and type-checks against the Flux standard library (function names,
argument names and types, imports) with ``@influxdata/flux-lsp-browser`` (npm, pinned in
``tools/flux-check/package-lock.json``, installed by ``make test``) on Node.js.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import require_binary

ROOT = Path(__file__).resolve().parents[2]
CHECKER = ROOT / "tools" / "flux-check"


def flux_check(scripts: list[dict[str, str]]) -> list[dict[str, Any]]:
    node = require_binary(("node", "nodejs"), "nodejs")
    if not (CHECKER / "node_modules" / "@influxdata" / "flux-lsp-browser").is_dir():
        pytest.fail(
            "the Flux checker is not installed: run `make test` "
            "(it runs `npm ci --prefix tools/flux-check`)",
            pytrace=False,
        )
    done = subprocess.run(
        [node, str(CHECKER / "check.mjs")],
        input=json.dumps(scripts),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    # the language server logs a line of its own on stdout before the answer
    result: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_every_flux_query_of_the_docs_type_checks() -> None:
    text = (ROOT / "docs" / "queries.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```flux\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    broken = (
        'from(bucket: "meterwatch/autogen")\n'
        "    |> range(start: 2026-01-05T00:00:00Z)\n"
        '    |> aggregateWindow(every: "15m", fn: mean)\n'  # a string where a duration goes
        "    |> pivott()\n"  # no such function
    )
    scripts = [
        {"name": f"docs/queries.md flux block {i + 1}", "flux": b} for i, b in enumerate(blocks)
    ]
    result = flux_check([*scripts, {"name": "broken", "flux": broken}])
    assert [r["name"] for r in result] == [s["name"] for s in scripts] + ["broken"]
    problems = {r["name"]: r["diagnostics"] for r in result[:-1] if r["diagnostics"]}
    assert not problems, json.dumps(problems, indent=2)
    # the checker does find mistakes (a test that cannot fail would prove nothing)
    messages = " | ".join(d["message"] for d in result[-1]["diagnostics"])
    assert "expected duration but found string" in messages
    assert "pivott" in messages
