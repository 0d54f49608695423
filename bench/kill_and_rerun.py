"""Kill ``mammo process`` with SIGKILL at random points, rerun it, and count the outcomes.

Each round writes fresh inputs: by default 190 distinct MG instances, byte copies of 5 of
them and 5 text files, 200 files in all. It starts ``mammo process`` ``--kills`` times and
kills each run at a random point, then runs it until one run completes. A random point is a
random number of archived files to wait for, then up to ``--max-jitter`` seconds more (see
`tests.faults.harness.kill_and_rerun`). It then matches every input file to
its outcome rows (result, duplicate record or quarantine record) and prints, per round and
in total: inputs, outcomes, inputs with more than one outcome (doubled), inputs with none
(lost), and files left in the work folders.

Everything is real: the CNN bootstrapped at 32 px and served alone by the local gRPC
server, Prefect's test API (shared by the runs to save its start-up), and a throwaway
PostgreSQL database created through ``--admin-url`` and dropped at the end.

    .venv/bin/python bench/kill_and_rerun.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

# Run from a checkout without installing: the harness lives in the tests package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="kill-and-rerun rounds")
    parser.add_argument("--instances", type=int, default=190,
                        help="distinct MG instances per round")
    parser.add_argument("--duplicates", type=int, default=5,
                        help="byte copies of instances per round, under other names")
    parser.add_argument("--not-dicom", type=int, default=5,
                        help="text files per round, which end in quarantine")
    parser.add_argument("--kills", type=int, default=4, help="killed runs per round")
    parser.add_argument("--max-jitter", type=float, default=0.3,
                        help="largest random delay in seconds between reaching a run's "
                        "random kill point and the kill")
    parser.add_argument("--batch-size", type=int, default=4, help="MAMMO_BATCH_SIZE of the runs")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the kill delays and the inputs; default random")
    parser.add_argument("--admin-url",
                        default=os.environ.get("MAMMO_TEST_POSTGRES_URL", DEFAULT_ADMIN_URL),
                        help="PostgreSQL URL allowed to create and drop a database")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    scratch = Path(tempfile.mkdtemp(prefix="mammo-kill-bench-"))
    # Prefect and Keras read their homes when imported, so set them first.
    os.environ.setdefault("PREFECT_HOME", str(scratch / "prefect"))
    os.environ.setdefault("KERAS_HOME", str(scratch / "keras"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from db.migrate import upgrade
    from mammo.settings import Settings
    from serving.local_server import LocalModelServer
    from tests.faults.harness import (
        audit_outcomes,
        fault_environment,
        kill_and_rerun,
        publish_fault_model,
        write_inputs,
    )

    rng = np.random.default_rng(arguments.seed)
    repository, model_config = publish_fault_model(scratch)
    database = f"mammo_kill_bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(arguments.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    database_url = make_url(arguments.admin_url).set(database=database) \
        .render_as_string(hide_password=False)

    server = None
    totals = {"inputs": 0, "outcomes": 0, "doubled": 0, "lost": 0, "left": 0, "kills": 0,
              "rounds_with_problems": 0}
    try:
        environment = fault_environment(
            scratch / "data-0", database_url=database_url, repository=repository,
            model_config=model_config, serving_address="127.0.0.1:0",
            batch_size=arguments.batch_size)
        server = LocalModelServer(Settings(**{
            "model_repository": repository, "model_config_file": model_config,
            "model_names": ("cnn",), "data_dir": scratch / "server"}), port=0)
        port = server.start()

        with prefect_test_harness(server_startup_timeout=120):
            print("round | inputs | outcomes | doubled | lost | left in work | kills "
                  "(target+jitter: archived at kill) | final runs | seconds")
            for number in range(1, arguments.rounds + 1):
                data_dir = scratch / f"data-{number}"
                round_environment = {
                    **environment, "MAMMO_DATA_DIR": str(data_dir),
                    "MAMMO_SERVING_ADDRESS": f"127.0.0.1:{port}",
                    "PREFECT_API_URL": PREFECT_API_URL.value()}
                engine = create_engine(database_url)
                with engine.begin() as connection:
                    connection.execute(text("DROP SCHEMA public CASCADE"))
                    connection.execute(text("CREATE SCHEMA public"))
                engine.dispose()
                upgrade(database_url)
                inputs = write_inputs(
                    data_dir / "incoming", instances=arguments.instances,
                    duplicates=arguments.duplicates, not_dicom=arguments.not_dicom,
                    seed=int(rng.integers(2**31)))

                started = time.monotonic()
                result = kill_and_rerun(round_environment, data_dir, kills=arguments.kills,
                                        expected_archived=arguments.instances, rng=rng,
                                        max_jitter=arguments.max_jitter,
                                        log_path=scratch / f"round-{number}.log")
                elapsed = time.monotonic() - started
                audit = audit_outcomes(database_url, data_dir, inputs)

                kills = ", ".join(
                    f"{target}+{jitter:.2f}s: {archived}" for target, jitter, archived in
                    zip(result.kill_targets, result.kill_jitters, result.archived_at_kill))
                print(f"{number} | {audit.inputs} | {audit.outcomes} | {len(audit.doubled)} "
                      f"| {len(audit.lost)} | {len(audit.left_in_work)} | {kills} | "
                      f"{result.final_runs} (exit {result.final_exit_codes}) | {elapsed:.0f}",
                      flush=True)
                if not audit.clean:
                    totals["rounds_with_problems"] += 1
                    print(f"  round {number} problems: lost {audit.lost[:5]}, doubled "
                          f"{audit.doubled[:5]}, wrong {audit.wrong_outcome[:5]}, archive "
                          f"{audit.archive_problems[:5]}, left {audit.left_in_work[:5]}; "
                          f"logs in {scratch}", flush=True)
                totals["inputs"] += audit.inputs
                totals["outcomes"] += audit.outcomes
                totals["doubled"] += len(audit.doubled)
                totals["lost"] += len(audit.lost)
                totals["left"] += len(audit.left_in_work)
                totals["kills"] += result.killed_runs
    finally:
        if server is not None:
            server.stop(grace=0)
        with admin.connect() as connection:
            connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": database})
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}"'))
        admin.dispose()

    print(f"total: {arguments.rounds} rounds, {totals['kills']} runs killed, "
          f"{totals['inputs']} inputs, {totals['outcomes']} outcomes, {totals['doubled']} "
          f"doubled, {totals['lost']} lost, {totals['left']} files left in work, "
          f"{totals['rounds_with_problems']} rounds with problems")
    if totals["rounds_with_problems"]:
        print(f"data folders and run logs kept in {scratch}")
        return 1
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
