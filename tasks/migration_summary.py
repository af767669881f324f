"""One summary of a whole migration: what its inventory's files became, and
where each ingest run's report is. Counts, run IDs and folders only: the
artifact is visible to every UI user, so no PHI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from prefect.artifacts import create_markdown_artifact

from tasks.child_runs import ChildRun

MIGRATE_SUMMARY_ARTIFACT_KEY = "dicom-migrate-summary"


def summary_markdown(
    source: str, counts: Mapping[str, int], skipped: Mapping[str, int],
    children: Sequence[ChildRun],
) -> str:
    lines = [f"## DICOM migration of `{source}`", "", "| status | files |", "|---|---:|"]
    lines += [f"| {status} | {count} |" for status, count in counts.items()]
    lines += [f"| {name} (not imported again) | {count} |" for name, count in skipped.items()]
    lines += ["", "| ingest run | state | report folder |", "|---|---|---|"]
    lines += [f"| {c.name} (`{c.flow_run_id}`) | {c.state} | `{c.report_folder or '-'}` |"
              for c in children]
    return "\n".join(lines) + "\n"


def publish_summary(markdown: str) -> None:
    create_markdown_artifact(key=MIGRATE_SUMMARY_ARTIFACT_KEY, markdown=markdown,
                             description="Files of the migration by final status, and its "
                             "ingest runs' reports.")
