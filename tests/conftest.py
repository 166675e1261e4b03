"""What the tests share, each built once per session: the embedded assets, the real data beside
the checkout, one local Ray cluster for the tests that drive actors in this process, and the
fault-free run that the fault tests and the default pipeline's e2e checks read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.embedded import (
    TaskConfig,
    TinyModelConfig,
    build_embedded_assets,
    build_tiny_model,
    build_tokenizer,
    generate_problems,
    make_rows,
    teacher_for_split,
    tokenizer_corpus,
)

ROOT = Path(__file__).resolve().parents[1]
# GSM8K and the paper's benchmarks, which nobody here wrote; a clone of this repository alone lacks them
DATA_DIR = Path(os.environ.get("GFT_DATA_DIR", ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data: reads the real data of GFT_DATA_DIR (default ../shared/data)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker("real_data")


REAL_DATA_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):  # in the controller too, when pytest-xdist runs the tests
    if report.skipped and "real_data" in report.keywords:
        REAL_DATA_SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """In CI the real data must be there and every test that reads it must run."""
    if IN_CI and REAL_DATA_SKIPPED:
        print(f"\nCI=true: {len(REAL_DATA_SKIPPED)} real-data tests were skipped, which CI does not allow, "
              f"the first {REAL_DATA_SKIPPED[0]}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def task_config() -> TaskConfig:
    return TaskConfig()


@pytest.fixture(scope="session")
def tokenizer(task_config):
    problems = generate_problems(task_config, "train", 400)
    rows = make_rows(problems, "train", teacher_for_split(task_config, "train"), n_teacher=3)
    return build_tokenizer(tokenizer_corpus(rows))


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return build_tiny_model(tokenizer, TinyModelConfig())


@pytest.fixture(scope="session")
def assets(tmp_path_factory, task_config):
    return build_embedded_assets(
        tmp_path_factory.mktemp("embedded"), task_config, n_train=600, n_test=120, n_ood=120
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data (GSM8K, the paper's benchmarks): ``GFT_DATA_DIR``, else ``../shared/data``."""
    if not DATA_DIR.is_dir():
        message = (f"the real data is not at {DATA_DIR}: set GFT_DATA_DIR to a folder holding gsm8k/ and "
                   "math_eval/ (the GSM8K parquet files and the paper's benchmarks)")
        if IN_CI:
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return DATA_DIR


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every test that drives actors from this process; tests start
    and end their actors, never the cluster. Its CPUs are logical: enough to seat any test's
    roles at once, while the actors' torch threads follow the machine's cores."""
    import ray

    from pipeline.driver.roles import start_ray
    from pipeline.recipe.config import RunConfig

    config = RunConfig()
    config.ray.num_cpus = 8
    start_ray(config)
    yield
    ray.shutdown()


@pytest.fixture
def ray_starts(monkeypatch) -> list:
    """A run's calls to start or join Ray, recorded instead of made: whatever a run refuses, it
    must refuse before the first (``ray.is_initialized`` cannot tell, with ``ray_cluster`` up)."""
    import pipeline.driver.run

    calls = []
    monkeypatch.setattr(pipeline.driver.run, "start_ray", calls.append)
    return calls


@pytest.fixture(scope="session")
def fault_free_run(tmp_path_factory) -> Path:
    """``bench.chaos``'s recipe (the default's stages at a few steps each) run once without
    faults through the ``gft`` command: the twin every fault test must end bitwise equal to, and
    the run the default pipeline's end-to-end checks read. Under pytest-xdist the first worker
    to need it runs it, the others wait for it and read the same folder."""
    return _shared_fault_free_run(tmp_path_factory, staleness=0)


@pytest.fixture(scope="session")
def fault_free_run_ahead(tmp_path_factory) -> Path:
    """The same, with the rollout sampling ahead of the update (``rollout.max_staleness=1``)."""
    return _shared_fault_free_run(tmp_path_factory, staleness=1)


@pytest.fixture(scope="session")
def fault_free_run_two_ahead(tmp_path_factory) -> Path:
    """The same, with the rollouts of two steps under way at once (``rollout.max_staleness=2``)."""
    return _shared_fault_free_run(tmp_path_factory, staleness=2)


def _shared_fault_free_run(tmp_path_factory, staleness: int) -> Path:
    from filelock import FileLock

    from bench import chaos

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder above every worker's own
    out = shared / f"fault-free-{staleness}"
    with FileLock(shared / f"fault-free-{staleness}.lock"):
        finished = chaos.run_dir_in(out)
        return finished if finished and (finished / "eval.json").is_file() else chaos.fault_free_run(out, staleness)


@pytest.fixture(scope="session")
def mlflow_history():
    """``read(tracking_uri)``: every MLflow run there, by run id, as ``{name: [(step, value), ...]}``."""
    from mlflow.tracking import MlflowClient

    def read(tracking_uri: str) -> dict[str, dict[str, list[tuple[int, float]]]]:
        client = MlflowClient(tracking_uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        return {run.info.run_id: {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
                                    for key in run.data.metrics} for run in runs}

    return read
