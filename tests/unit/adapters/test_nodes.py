"""Node control is chosen from the runbook by database kind; a database without it says
which operations it cannot do and which field would allow them. The engine never imports
the lab."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from drorch.adapters.nodes import LocalPgNode, NodeControlUnavailable, node_control_for
from drorch.config import Runbook

ROOT = Path(__file__).resolve().parents[3]


def _runbook(node: dict[str, str] | None) -> Runbook:
    ep_a = {"host": "127.0.0.1", "port": 5432, "dbname": "app"}
    if node is not None:
        ep_a["node"] = node  # type: ignore[assignment]
    return Runbook.model_validate({
        "name": "t",
        "regions": [{"name": "region-a", "aws_region": "us-east-1", "role": "primary"},
                    {"name": "region-b", "aws_region": "us-west-2", "role": "secondary"}],
        "databases": [{"name": "main", "endpoints": {
            "region-a": ep_a, "region-b": {"host": "127.0.0.1", "port": 5433}}}]})


def test_a_local_node_is_the_endpoints_data_directory_with_links_followed(
        tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "main").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    node = node_control_for(_runbook({"data_directory": str(tmp_path / "link" / "main")}))(
        "main", "region-a")
    assert isinstance(node, LocalPgNode)
    assert node.datadir == real / "main"
    assert node.port == 5432
    assert node.log_file == real / "main-region-a.log"
    assert "port=5432" in node.dsn("app") and "dbname=app" in node.dsn("app")


def test_no_node_names_the_operations_and_the_field() -> None:
    control = node_control_for(_runbook({"data_directory": "/x"}))
    with pytest.raises(NodeControlUnavailable) as e:
        control("main", "region-b")
    msg = str(e.value)
    assert "main in region-b" in msg and "pg_rewind" in msg and "fencing" in msg
    assert "databases[main].endpoints.region-b.node.data_directory" in msg


def test_nothing_outside_the_lab_imports_it() -> None:
    """``drorch/cli_lab.py`` is the lab's own command group (``drorch lab ...``)."""
    offenders = []
    for path in (ROOT / "drorch").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("drorch/lab/") or rel == "drorch/cli_lab.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n == "drorch.lab" or n.startswith("drorch.lab.") for n in names):
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []
