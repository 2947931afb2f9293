"""``drorch audit ship`` and ``drorch audit verify s3://...``: the audit archive in S3
(``drorch.archive``). ``audit verify`` of a local log stays in ``drorch.cli``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from drorch.cli_common import RunbookOpt, err, load_or_exit, open_journal, out
from drorch.config import Runbook
from drorch.exitcodes import ExitCode

BucketOpt = Annotated[str | None, typer.Option(
    "--bucket", help="s3://BUCKET/PREFIX (prefix optional): the archive (default: the "
    "runbook's audit.archive.url)")]
AwsRegionOpt = Annotated[str | None, typer.Option(
    help="The bucket's AWS region (default: the runbook's audit.archive.aws_region, else "
         "its primary region's, else $AWS_DEFAULT_REGION, else us-east-1)")]


def _url_or_exit(url: str) -> object:
    from drorch.archive.layout import ArchiveUrl

    try:
        return ArchiveUrl.parse(url)
    except ValueError as exc:
        err.print(f"[bold red]bad archive:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(ExitCode.USAGE) from None


def _s3_client(rb: Runbook | None, aws_region: str | None) -> object:
    from drorch.adapters.aws import AwsClients

    archive = rb.audit.archive if rb is not None else None
    region = (aws_region or (archive.aws_region if archive else None)
              or (rb.primary.aws_region if rb is not None else None)
              or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    clients = AwsClients.for_runbook(rb) if rb is not None else AwsClients()
    return clients("s3", region)


def audit_ship(
    runbook: RunbookOpt,
    bucket: BucketOpt = None,
    retention_days: Annotated[int | None, typer.Option(
        min=1, max=36500, help="COMPLIANCE retention of each object written, in days from now "
        "(default: the runbook's audit.archive.retention_days)")] = None,
    aws_region: AwsRegionOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Say what would be written; write nothing.")] = False,
) -> None:
    """Copy the audit log's new entries, its head and the incident reports to the
    Object Lock bucket: each object once, under COMPLIANCE retention. Shipping again
    writes only what is new. Exit 0 shipped (or nothing new), 1 refused or failed."""
    from drorch.adapters.s3 import ArchiveUnavailable
    from drorch.archive.ship import ShipRefused, ship
    from drorch.store.sqlite import SqliteStore

    rb = load_or_exit(runbook)
    archive = rb.audit.archive
    url = bucket or (archive.url if archive else None)
    days = retention_days or (archive.retention_days if archive else None)
    if url is None or days is None:
        err.print(f"{escape(str(runbook))} has no audit.archive: give --bucket "
                  "s3://BUCKET/PREFIX and --retention-days", highlight=False)
        raise typer.Exit(ExitCode.USAGE)
    target = _url_or_exit(url)
    state = Path(rb.state_dir)
    log = state / "audit.jsonl"
    if not log.is_file():
        err.print(f"no audit log to ship: {log} does not exist", highlight=False)
        raise typer.Exit(ExitCode.NOTHING_TO_DO)
    store = open_journal(lambda: SqliteStore.read_only(state / "journal.db"))
    try:
        incidents = [i.id for i in store.incidents(rb.name)]
    finally:
        store.close()
    reports = [(i, state / "reports" / f"{i}.json") for i in incidents]
    try:
        result = ship(_s3_client(rb, aws_region), target, runbook=rb.name,  # type: ignore[arg-type]
                      log=log, reports=reports, retention_days=days, dry_run=dry_run)
    except (ShipRefused, ArchiveUnavailable) as exc:
        err.print(f"[bold red]audit ship refused:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    except Exception as exc:  # noqa: BLE001 (an AWS error: one sentence, never a traceback)
        err.print(f"[bold red]audit ship failed:[/] {type(exc).__name__}: "
                  f"{escape(str(exc).splitlines()[0] if str(exc) else '')}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    out.print(result.message(), highlight=False)


def verify_s3(url: str, runbook: Path | None, aws_region: str | None,
              expected_head: str | None) -> None:
    """``drorch audit verify s3://...``: exit 0 when the archive is intact, 1 naming every
    problem when not."""
    from drorch.archive.verify import verify_archive

    target = _url_or_exit(url)
    rb = load_or_exit(runbook) if runbook is not None else None
    try:
        result = verify_archive(_s3_client(rb, aws_region), target,  # type: ignore[arg-type]
                                expected_head=expected_head)
    except Exception as exc:  # noqa: BLE001 (no bucket, no access, no answer: one sentence)
        err.print(f"[bold red]{escape(url)}: archive not readable:[/] {type(exc).__name__}: "
                  f"{escape(str(exc).splitlines()[0] if str(exc) else '')}", highlight=False)
        raise typer.Exit(ExitCode.FAILED) from None
    (out if result.ok else err).print(escape(result.message(str(target))), highlight=False)
    raise typer.Exit(ExitCode.OK if result.ok else ExitCode.FAILED)
