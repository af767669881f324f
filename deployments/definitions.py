"""The deployments: scheduled ingestion, manual ingestion, retry, migration.

Built from the settings of the machine that serves them, so the cron, the
landing source and the form's defaults are configured in one place
(``DICOM_IMPORT_*`` or ``dicom-import.toml``). ``deployments/prefect.yaml``
declares the same for a work pool.
"""

from __future__ import annotations

from typing import Any, cast

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType
from pydantic import BaseModel

from config.settings import Settings
from flows.ingest import dicom_ingest
from flows.migrate import dicom_migrate
from flows.parameters import IngestParameters, MigrateParameters, RetryParameters
from flows.retry import retry_failed

SCHEDULED = "scheduled"
MANUAL = "manual"
RETRY = "retry"
MIGRATE = "migrate"
TAGS = ["dicom-import"]


def form_defaults(model: type[BaseModel], settings: Settings) -> dict[str, Any]:
    """The settings that fill the model's fields. Fields defaulted from
    settings carry no default in the JSON schema (it is computed at run time),
    so without these the UI form would open with those fields empty."""
    return {
        name: getattr(settings, name)
        for name in model.model_fields
        if getattr(settings, name, None) is not None
    }


def build(settings: Settings) -> list[RunnerDeployment]:
    """Manual, retry and migrate always; scheduled when a landing source is configured
    (a scheduled run without a source could only fail)."""
    common: dict[str, Any] = {
        # Importable wherever the package is installed, whatever the cwd.
        "entrypoint_type": EntrypointType.MODULE_PATH,
    }
    built = [
        dicom_ingest.to_deployment(
            name=MANUAL,
            description="Import a folder or S3 prefix on demand: fill in the form "
            "(Run > Custom run). Every field has a default from the server's settings.",
            parameters={"params": form_defaults(IngestParameters, settings)},
            tags=[*TAGS, MANUAL],
            **common,
        ),
        retry_failed.to_deployment(
            name=RETRY,
            description="Import again what failed for reasons that may pass, and read the "
            "output of jobs an earlier run left unread. Select by flow run ID, job ID, or "
            "leave both empty for the whole data store.",
            parameters={"params": form_defaults(RetryParameters, settings)},
            tags=[*TAGS, RETRY],
            # Two retries at once are safe (claims), but one after the other is clearer.
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
            **common,
        ),
        dicom_migrate.to_deployment(
            name=MIGRATE,
            description="Migrate a whole source: inventory it once, then run the manual "
            "ingest deployment several times on its work pool until every file is accounted "
            "for, with a bounded number of import jobs in flight.",
            parameters={"params": form_defaults(MigrateParameters, settings)},
            tags=[*TAGS, MIGRATE],
            **common,
        ),
    ]
    if settings.schedule_source:
        built.insert(0, dicom_ingest.to_deployment(
            name=SCHEDULED,
            description=f"Ingest new and changed files of {settings.schedule_source} into "
            f"data store {settings.datastore} (created by the first run if missing) on "
            f"schedule ({settings.schedule_cron}, {settings.schedule_timezone}).",
            schedules=[Cron(settings.schedule_cron, timezone=settings.schedule_timezone)],
            parameters={"params": {
                **form_defaults(IngestParameters, settings),
                "source": settings.schedule_source,
                # Never everything again every night, whatever the settings say.
                "reimport": False,
                # Unattended, into the data store its settings name: the first
                # night must not fail on a store nobody has created yet.
                "create_datastore": True,
            }},
            tags=[*TAGS, SCHEDULED],
            # A run still going when the next one is due: the new one is
            # cancelled rather than run alongside it.
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
            ),
            **common,
        ))
    # to_deployment answers in the caller's mode: from sync code, as here, the
    # deployment itself; Prefect types it "deployment or coroutine" for both.
    return cast(list[RunnerDeployment], built)
