"""`gft eval` of the tiny model on two real benchmarks through Ray, with each rollout backend
(vLLM's CPU build for ``vllm``), then `gft score` of what it wrote: the harness is real even if
the tiny model's accuracy is near zero."""

import json

import pytest

from pipeline.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["hf", "vllm"])
def eval_run(ray_cluster, assets, shared_data, tmp_path_factory, request):
    out = tmp_path_factory.mktemp("eval")
    argv = ["eval", str(assets.base_model), "--benchmarks", "amc23,gaokao2023en",
            "--benchmark-dir", str(shared_data / "math_eval"), "--max-prompts", "6", "--k", "3",
            "--max-new-tokens", "12", "--max-prompt-length", "512", "--out", str(out), "--backend", request.param]
    return main(argv), out


def test_eval_writes_metrics_and_generations_per_benchmark(eval_run, capsys):
    code, out = eval_run
    assert code == 0
    report = json.loads((out / "eval.json").read_text())
    assert set(report["results"]) == {"amc23", "gaokao2023en"}
    for metrics in report["results"].values():
        assert metrics["prompts"] == 6
        assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["pass@3"] <= 1.0
    # items without a gold answer, and prompts over the length limit, are named, not scored
    skipped = report["skipped"]["gaokao2023en"]
    assert skipped[:2] == ["line 168: empty answer", "line 193: empty answer"]
    assert skipped[2:] and all(s.endswith("tokens > 512") for s in skipped[2:])
    rows = [json.loads(line) for line in (out / "generations" / "amc23.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * (1 + 3)
    assert rows[0]["ground_truth"] == "27" and "Alicia" in rows[0]["prompt"]
    greedy = [r["reward"] for r in rows if r["sample"] == "greedy"]
    assert report["results"]["amc23"]["accuracy"] == pytest.approx(sum(greedy) / 6)


def test_score_rescores_the_saved_generations_without_a_model(eval_run, tmp_path, capsys):
    _, out = eval_run
    source = out / "generations" / "amc23.jsonl"
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    rows[0]["response"] = "so the answer is \\boxed{27}"  # make one greedy response right
    edited = tmp_path / "edited.jsonl"
    edited.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["score", str(edited)]) == 0
    printed = capsys.readouterr().out
    scored = [json.loads(line) for line in (tmp_path / "edited.scored.jsonl").read_text().splitlines()]
    assert scored[0]["reward"] == 1.0 and scored[0]["previous_reward"] == rows[0]["reward"]
    assert [r["reward"] for r in scored[1:]] == [r["reward"] for r in rows[1:]]  # the rest re-score the same
    assert "amc23: 24 rows" in printed and "accuracy" in printed
