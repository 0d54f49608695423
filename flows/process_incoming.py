"""The main job: score every complete DICOM file in the incoming folder.

Sequence of one run:
1. check that every model is served and matches the signature contract, and that a sample
   of every supported transfer syntax decodes (fail fast, before any file is touched);
2. lock a work folder, reclaim files left by dead runs, wait until new files are complete and
   claim them by atomic rename;
3. per batch: read, deduplicate and preprocess (on worker processes, ahead of scoring);
   score with the four models; ensemble; write all outcomes in one transaction; then
   archive, quarantine or delete the files. The ensemble uses the weights and threshold
   that the retraining flow stored for the served versions, or the settings' when it
   stored none;
4. record the run and publish a summary artifact.

A scoring failure after the client's retries fails the run and leaves the batch's files in
the work folder, where the next run reclaims them: nothing is quarantined for a server outage.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Callable, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote
from pydantic import AfterValidator, Field
from sqlalchemy.orm import Session

from db import writes
from db.engine import make_engine, make_session_factory
from db.retraining import ensemble_configuration_for
from mammo.errors import ConfigurationError
from mammo.settings import Settings
from mammo.texts import text
from serving.client import ServedModel, ServingClient
from tasks.ensemble import combine_scores
from tasks.file_outcomes import apply_file_outcomes
from tasks.decoder_selftest import run_decoder_selftest
from tasks.intake import (
    ClaimedFile,
    WorkFolder,
    iter_candidate_files,
    remove_empty_folders,
    wait_until_complete,
)
from tasks.parallel_prepare import PreparationPipeline, ScoredLookup, open_settings_executor
from tasks.prepare import PreparedBatch
from tasks.preprocess import PREPROCESSING_VERSION
from tasks.record_outcomes import ModelRun, record_batch
from tasks.score_checks import reject_invalid_scores

T = TypeVar("T")


@dataclass(frozen=True)
class EnsembleSettings:
    """Weights and threshold of the ensemble for one run, and where they came from."""

    weights: dict[str, float]
    threshold: float
    #: The retraining flow run that stored them, or "settings".
    source: str


@task(cache_policy=NO_CACHE)
def check_served_models(client: ServingClient) -> dict[str, ServedModel]:
    """Fail the run before any file moves unless every model is served per the contract."""
    served = client.check_models()
    get_run_logger().info("Serving %s", ", ".join(
        f"{name}:{model.version} ({model.input_height}x{model.input_width})"
        for name, model in served.items()))
    return served


@task(cache_policy=NO_CACHE)
def check_pixel_decoders() -> int:
    """Fail the run before any file moves unless every supported transfer syntax decodes."""
    checks = run_decoder_selftest()
    get_run_logger().info("Pixel data decoders work for %d transfer syntaxes", len(checks))
    return len(checks)


@task(cache_policy=NO_CACHE)
def claim_incoming(settings: Settings, work: WorkFolder) -> tuple[list[ClaimedFile], int]:
    """Reclaim dead runs' files, then claim complete files; return them and the number
    still being written."""
    logger = get_run_logger()
    reclaimed = work.reclaim_orphans()
    candidates = list(iter_candidate_files(settings.incoming_dir))
    complete, pending = wait_until_complete(
        candidates, stability_seconds=settings.stability_seconds,
        max_wait_seconds=settings.max_wait_seconds)
    claimed = [c for path in complete
               if (c := work.claim(settings.incoming_dir, path)) is not None]
    remove_empty_folders(settings.incoming_dir, min_age_seconds=settings.stability_seconds)
    if pending:
        logger.warning("%d files are still being written and are left for the next run",
                       len(pending))
    logger.info("Claimed %d new files and reclaimed %d from dead runs", len(claimed),
                len(reclaimed))
    return reclaimed + claimed, len(pending)


def in_transaction(settings: Settings, session_factory, work: Callable[[Session], T]) -> T:
    """Run ``work`` in one transaction, retried as the settings specify when the database
    connection fails (see `db.writes.run_in_transaction`)."""
    return writes.run_in_transaction(
        session_factory, work, retries=settings.database_retries,
        backoff_seconds=settings.database_retry_backoff_seconds)


def _scored_lookup(settings: Settings, session_factory) -> ScoredLookup:
    """Return a function that returns the (content hash, archive path) of each given UID
    that an earlier run scored, in one query."""
    def find_scored(uids: Sequence[str]) -> dict[str, tuple[str, str]]:
        def read(session: Session) -> dict[str, tuple[str, str]]:
            return {uid: (row.content_hash, row.archive_path)
                    for uid, row in writes.find_instances(session, uids).items()}

        return in_transaction(settings, session_factory, read)

    return find_scored


def _record_crashed_runs(settings: Settings, session_factory, run_ids: list[str]) -> None:
    """Record as crashed the runs whose abandoned work folders this run emptied."""
    if not run_ids:
        return
    crashed = in_transaction(settings, session_factory,
                             lambda session: writes.mark_runs_crashed(session, run_ids))
    if crashed:
        get_run_logger().warning("Recorded %d runs that died before their end as crashed: %s",
                                 crashed, ", ".join(run_ids))


@task(cache_policy=NO_CACHE)
def score(client: ServingClient, batch: PreparedBatch) -> dict[str, ModelRun]:
    """Score the batch with every model; images given a non-finite score move to the batch's
    rejections."""
    if not batch.to_score:
        return {}
    scores = client.score(batch.image_array())
    model_runs = {name: ModelRun(version=result.version,
                                 probabilities=[float(p) for p in result.probabilities])
                  for name, result in scores.items()}
    return reject_invalid_scores(batch, model_runs)


@task(cache_policy=NO_CACHE)
def choose_ensemble_settings(settings: Settings, session_factory,
                             served: dict[str, ServedModel]) -> EnsembleSettings:
    """Return the weights and threshold stored for the served versions, else the settings.

    The retraining flow stores them for one exact set of versions. A model server that
    serves another set (for example while it loads a newly published version) gets the
    ``MAMMO_ENSEMBLE_WEIGHTS`` and ``MAMMO_OPERATING_THRESHOLD`` settings.
    """
    versions = ",".join(f"{name}:{served[name].version}" for name in settings.model_names
                        if name in served)
    stored = in_transaction(settings, session_factory,
                            lambda session: ensemble_configuration_for(session, versions))
    if stored is not None:
        get_run_logger().info("Ensemble weights and threshold %.4f from retraining run %s "
                              "for %s", stored.threshold, stored.flow_run_id, versions)
        return EnsembleSettings(weights=dict(stored.weights), threshold=stored.threshold,
                                source=stored.flow_run_id)
    get_run_logger().info("No stored ensemble for %s; using the weights and threshold of "
                          "the settings", versions)
    return EnsembleSettings(
        weights={name: settings.ensemble_weight(name) for name in served},
        threshold=settings.operating_threshold, source="settings")


@task(cache_policy=NO_CACHE)
def record(settings: Settings, session_factory, batch: PreparedBatch,
           model_runs: dict[str, ModelRun], run_id: str,
           ensemble_settings: EnsembleSettings) -> dict[str, int]:
    """Combine the scores, write the batch's outcomes in one transaction, then archive,
    quarantine or delete its files; return the number of files moved per destination.

    Instances that another run recorded first become duplicates or rejections of ``batch``.
    A crash between the commit and the moves leaves the files in the work folder, where the
    next run finds their outcomes and only moves them.
    """
    ensemble = []
    if batch.to_score:
        ensemble = combine_scores(
            {name: run.probabilities for name, run in model_runs.items()},
            ensemble_settings.weights, ensemble_settings.threshold)
    settlement = in_transaction(settings, session_factory, lambda session: record_batch(
        session, batch, model_runs=model_runs, ensemble=ensemble, flow_run_id=run_id,
        preprocessing_version=PREPROCESSING_VERSION, archive_dir=settings.archive_dir,
        quarantine_dir=settings.quarantine_dir))
    if settlement.duplicates or settlement.rejections:
        get_run_logger().warning(
            "Another run recorded %d instances of this batch first; their files are kept as "
            "%d duplicates and %d UID conflicts", len(settlement.duplicates)
            + len(settlement.rejections), len(settlement.duplicates),
            len(settlement.rejections))
    settlement.apply(batch)
    return apply_file_outcomes(batch, archive_dir=settings.archive_dir,
                               quarantine_dir=settings.quarantine_dir)


ModelName = Annotated[str, Field(min_length=1, max_length=64)]


def _reject_repeated_names(names: list[str] | None) -> list[str] | None:
    if names is not None and len(set(names)) != len(names):
        raise ValueError(f"model_names must name each model once, got {names}")
    return names


def _with_models(settings: Settings, model_names: list[str]) -> Settings:
    """Return ``settings`` scoring with ``model_names`` only, in the settings' model order."""
    unknown = [name for name in model_names if name not in settings.model_names]
    if unknown:
        raise ConfigurationError(
            f"model_names {unknown} are not configured models; choose from "
            f"{list(settings.model_names)} (MAMMO_MODEL_NAMES)")
    chosen = tuple(name for name in settings.model_names if name in model_names)
    return settings.model_copy(update={"model_names": chosen})


@flow(name="process_incoming", log_prints=False)
def process_incoming(
    batch_size: Annotated[int | None, Field(ge=1, le=1024, strict=True)] = None,
    model_names: Annotated[list[ModelName] | None,
                           Field(min_length=1, json_schema_extra={"uniqueItems": True}),
                           AfterValidator(_reject_repeated_names)] = None,
) -> dict[str, Any]:
    """Score every complete file in the incoming folder once; return the run's counts.

    ``batch_size`` overrides the ``MAMMO_BATCH_SIZE`` setting for this run. ``model_names``
    scores with only these models, which must be among ``MAMMO_MODEL_NAMES``. Parameters
    from the UI or the API are checked strictly (the string "8" is not a batch size, and
    an empty or repeated model list is invalid), so a wrong one fails the run before it
    touches any file or row.
    """
    settings = Settings()
    if model_names is not None:
        settings = _with_models(settings, model_names)
    settings.ensure_folders()
    logger = get_run_logger()
    run_id = str(flow_run.id or "local")
    size = batch_size or settings.batch_size

    engine = make_engine(settings.resolved_database_url())
    session_factory = make_session_factory(engine)
    counts = {"files_claimed": 0, "scored": 0, "duplicates": 0, "quarantined": 0}
    pending = 0
    status = "failed"
    in_transaction(settings, session_factory,
                   lambda session: writes.start_run(session, run_id))
    try:
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(ServingClient(settings))
            work = stack.enter_context(WorkFolder(settings.work_dir, run_id))
            served = check_served_models(client)
            ensemble_settings = choose_ensemble_settings(settings, session_factory, served)
            check_pixel_decoders()
            image_size = max(max(m.input_height, m.input_width) for m in served.values())
            files, pending = claim_incoming(settings, work)
            counts["files_claimed"] = len(files)
            _record_crashed_runs(settings, session_factory, work.dead_run_ids)

            executor = stack.enter_context(open_settings_executor(settings, len(files)))
            pipeline = stack.enter_context(PreparationPipeline(
                executor, files, batch_size=size, image_size=image_size,
                find_scored=_scored_lookup(settings, session_factory), seen_in_run={},
                allowed_modalities=settings.allowed_modalities,
                max_pixels=settings.max_pixels, ahead=settings.prepare_ahead_batches))
            # Two task runs per batch: every task run costs the Prefect API some work, and
            # waiting for the workers' next batch is not a step of its own.
            for number, batch in enumerate(pipeline, start=1):
                # quote() hands the objects over as they are: Prefect would otherwise copy
                # collections while resolving inputs.
                model_runs = score(client, quote(batch))
                record(settings, session_factory, quote(batch), model_runs, run_id,
                       ensemble_settings)
                counts["scored"] += len(batch.to_score)
                counts["duplicates"] += len(batch.duplicates)
                counts["quarantined"] += len(batch.rejections)
                logger.info("Batch %d done: %d scored, %d duplicates, %d quarantined", number,
                            len(batch.to_score), len(batch.duplicates), len(batch.rejections))
        status = "completed"
    finally:
        # NOTE: a kill between removing the empty work folder above and this write leaves
        # the run "running", because no later run finds a folder to mark it "crashed".
        try:
            in_transaction(settings, session_factory, lambda session: writes.finish_run(
                session, run_id, status=status, counts=counts))
        except Exception:
            # Keep the error that failed the run, if any, as the one that propagates.
            logger.exception("Cannot record the end of run %s as %s", run_id, status)
            if status == "completed":
                raise
        finally:
            engine.dispose()

    summary = text("run.summary", settings.language, run_id=run_id,
                   claimed=counts["files_claimed"], scored=counts["scored"],
                   duplicates=counts["duplicates"], quarantined=counts["quarantined"],
                   pending=pending)
    logger.info(summary)
    create_markdown_artifact(
        key="second-opinion-run",
        markdown=f"# {text('run.title', settings.language)}\n\n{summary}\n",
        description=summary)
    return {**counts, "pending": pending, "flow_run_id": run_id}
