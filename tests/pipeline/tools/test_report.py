"""The compare report's statistics against hand computations, and the page it writes."""

import json
import math

import numpy as np
import pytest

from pipeline.tools.report import (
    Run,
    holm,
    mean_ci95,
    paired_difference,
    paired_p,
    rl_gain_auc,
    ruled_out,
    share_name,
    share_of,
    summarize_runs,
    verdict,
    write_report,
)


def test_mean_ci95_on_known_numbers():
    mean, half = mean_ci95([1.0, 2.0, 3.0])  # s = 1, t(0.975, 2) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3), rel=1e-4)
    mean, half = mean_ci95([0.2, 0.4])  # s = 0.1414, t(0.975, 1) = 12.706
    assert mean == pytest.approx(0.3) and half == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2), rel=1e-4)
    values = [0.0, 1.0] * 21  # 41 degrees of freedom, past the old table's 30: t(0.975, 41) = 2.0195
    assert mean_ci95(values)[1] == pytest.approx(2.0195 * np.std(values, ddof=1) / math.sqrt(42), rel=1e-4)
    assert mean_ci95([5.0, 5.0, 5.0, 5.0]) == (5.0, 0.0)
    assert math.isnan(mean_ci95([0.7])[1])


def test_rl_gain_auc_is_the_gain_averaged_over_the_stage():
    # gains 0, 0.2, 0.2 at steps 0, 10, 30: area 0.5*10*0.2 + 20*0.2 = 5, over 30 steps
    assert rl_gain_auc([(0, 0.3), (10, 0.5), (30, 0.5)]) == pytest.approx(5 / 30)


def test_holm_adjusts_a_family_of_p_values_in_the_order_given():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> made non-decreasing: 0.06 for the last
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, math.nan, 0.04])  # an untested claim is not counted: m = 2
    assert adjusted[0] == pytest.approx(0.04) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_paired_p_is_a_two_sided_t_test_on_the_differences():
    # mean 2, s 1, t = 2 / (1 / sqrt 3) = sqrt 12 on 2 degrees of freedom, where P(|T| > t) = 1 - t / sqrt(t^2 + 2)
    assert paired_p([1.0, 2.0, 3.0]) == pytest.approx(1 - math.sqrt(12) / math.sqrt(14))
    assert paired_p([0.2, 0.2]) == 0.0 and paired_p([0.0, 0.0]) == 1.0 and math.isnan(paired_p([0.3]))


def test_verdicts_need_a_holm_adjusted_p_below_alpha_and_say_what_the_ci_rules_out():
    assert verdict((0.1, 0.05), 0.01) == "reproduced"
    assert verdict((-0.1, 0.05), 0.01) == "reversed"
    assert verdict((0.1, 0.05), 0.2).startswith("inconclusive (Holm-adjusted p = 0.2")
    assert verdict((0.1, math.nan), math.nan).startswith("one seed")
    assert verdict(None, math.nan) == "not measured"
    assert ruled_out((0.02, 0.03), 100, " points") == \
        "the CI rules out an effect in the paper's direction above 5 points, and one against it beyond 1 points"
    assert ruled_out((-0.05, 0.01), 100, " points") == \
        "the CI rules out any effect in the paper's direction, and one against it beyond 6 points"


def _fake_run(folder, pipeline, seed, before, after, grad_norms, with_stage1=True, self_advantages=(), retain=None):
    """A finished run folder as `run` writes it: eval.json and metrics.jsonl; ``retain``: pass@1 on
    the retain split at the base, after stage 1 (where the run has one) and after GRPO."""
    metrics = {"accuracy": 0.0, "pass@1": 0.0, "pass@2": 0.0, "entropy": 1.0}
    evals = {"base": {"test": dict(metrics), "ood": dict(metrics)}}
    lines = []
    if with_stage1:
        evals["stage1"] = {"test": metrics | {"accuracy": before, "pass@1": before - 0.1, "pass@2": before + 0.1,
                                              "entropy": 2.0 + seed}, "ood": dict(metrics)}
        lines += [{"stage": "stage1", "step": i + 1, "grad_norm": g, "entropy": 1.0 + i} for i, g in enumerate(grad_norms)]
        for line, advantage in zip(lines, self_advantages):  # GFT's self rows: A, and A x c half of it
            line |= {"advantage/self": advantage, "advantage_coefficient/self": advantage and advantage / 2,
                     "rectified_fraction/self": 0.5}
    evals["grpo"] = {"test": metrics | {"accuracy": after, "pass@1": after - 0.1, "pass@2": after + 0.1},
                     "ood": metrics | {"pass@1": after / 2}}
    for policy, value in zip([policy for policy in ("base", "stage1", "grpo") if policy in evals], retain or ()):
        evals[policy]["retain"] = metrics | {"pass@1": value}
    lines += [{"stage": "grpo", "step": 1, "grad_norm": 0.1},
              {"stage": "grpo", "step": 2, "grad_norm": 0.1, "eval/test/accuracy": (before + after) / 2}]
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({"evals": evals}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return Run.load(pipeline, seed, folder)


@pytest.fixture
def runs(tmp_path):
    return [
        _fake_run(tmp_path / "gft0", "gft", 0, before=0.4, after=0.6, grad_norms=[1.0, 2.0],
                  self_advantages=[-0.6, -0.8]),
        _fake_run(tmp_path / "gft1", "gft", 1, before=0.5, after=0.8, grad_norms=[1.0, 3.0],
                  self_advantages=[-0.4, None]),  # None: a step whose value was not finite
        _fake_run(tmp_path / "sft0", "sft", 0, before=0.4, after=0.4, grad_norms=[9.0, 5.0]),
        _fake_run(tmp_path / "sft1", "sft", 1, before=0.5, after=0.6, grad_norms=[7.0, 5.0]),
        _fake_run(tmp_path / "grpo0", "grpo", 0, before=0.0, after=0.1, grad_norms=[], with_stage1=False),
    ]


def test_summary_per_pipeline_and_paired_claims(runs):
    table = summarize_runs(runs, "test", k=2)
    gft = table["gft"]
    assert gft["seeds"] == [0, 1]
    assert gft["rl_gain"]["values"] == pytest.approx([0.2, 0.3])
    assert gft["stage1_max_grad_norm"]["values"] == [2.0, 3.0]
    assert gft["grpo_pass@2"]["mean"] == pytest.approx(0.8)
    # the GRPO curve runs 0 -> 2 steps through the mid-stage eval at step 2 and the final eval
    assert gft["rl_gain_auc"]["values"][0] == pytest.approx(rl_gain_auc([(0, 0.4), (2, 0.5), (2, 0.6)]))
    assert table["grpo"]["stage1_accuracy"]["values"] == [0.0]  # before GRPO is the base itself
    assert math.isnan(table["grpo"]["stage1_max_grad_norm"]["mean"])
    # the drift diagnostics, averaged over stage 1's steps
    assert gft["stage1_mean_advantage_self"]["values"] == pytest.approx([-0.7, -0.4])
    assert gft["stage1_mean_advantage_coefficient_self"]["values"] == pytest.approx([-0.35, -0.2])
    assert math.isnan(table["sft"]["stage1_mean_advantage_self"]["mean"])
    # GFT - SFT after GRPO, paired by seed: differences 0.2 and 0.2
    assert paired_difference(table, "gft", "sft", "grpo_accuracy") == pytest.approx((0.2, 0.0))
    assert paired_difference(table, "sft", "gft", "stage1_max_grad_norm")[0] == pytest.approx(5.5)
    assert paired_difference(table, "gft", "dft", "grpo_accuracy") is None


def test_report_files_open_offline(runs, tmp_path):
    report = write_report(runs, tmp_path / "report", "test", 2, "gft compare --seeds 2")
    text = report.read_text()
    assert "| gft | 2 | 60.0 ± " in text and "| grpo | 1 | 0.0 |" in text  # pipeline, seeds, primary metric
    assert "the seeds column says how many each pipeline ran" in text
    # claim 1: differences 0.2, 0.2 (p 0); grad-norm: 7, 4 (t = 5.5 / (2.121 / sqrt 2) on 1 degree of freedom,
    # p = 1 - 2 atan(t) / pi = 0.17, Holm x2); entropy: 0, 0 (p 1)
    assert "GFT -> GRPO beats SFT -> GRPO (sampled pass@1 after GRPO): **reproduced** (difference 20.0 ± 0.0 points, " \
           "2 seeds, p = 0; the CI rules out an effect in the paper's direction above 20 points, and any effect " \
           "against it)" in text
    p_grad = 1 - 2 * math.atan(5.5 / (math.sqrt(4.5) / math.sqrt(2))) / math.pi
    assert f"lower than SFT's (SFT minus GFT): **inconclusive (Holm-adjusted p = {2 * p_grad:.2g})**" in text
    claims = json.loads((tmp_path / "report" / "summary.json").read_text())["claims"]
    # no retain split, CHORD or shares of the prompts: those four claims not measured, the rest a family of three
    assert [c["p_holm"] for c in claims] == pytest.approx([0.0, 1.0, 2 * p_grad, *[math.nan] * 4], nan_ok=True)
    assert [c["verdict"] for c in claims][3:] == ["not measured"] * 4
    assert "Data efficiency" not in text and "Forgetting" not in text
    assert "## The `ood` split (secondary)" in text and "| gft | 2 | 35.0 ± " in text  # ood pass@1: 0.3, 0.4
    for name in ("accuracy", "entropy", "grad_norm", "pass_at_k", "drift"):
        assert (tmp_path / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "http" not in html
    assert json.loads((tmp_path / "report" / "summary.json").read_text())["table"]["sft"]["seeds"] == [0, 1]


def test_runs_on_shares_of_the_prompts_get_their_own_section_plot_and_paired_claim(runs, tmp_path):
    """gft@0.25 and sft@0.25 (stage 1 on a quarter of the prompts) beside the main runs: the main
    table keeps to the main runs, the data-efficiency table has a column pair per share, and the
    claim pairs GFT and SFT at the smallest share by seed."""
    shares = [_fake_run(tmp_path / f"{name}-share{seed}", share_name(name, 0.25), seed, before=before, after=after,
                        grad_norms=[1.0])
              for name, seed, before, after in (("gft", 0, 0.3, 0.5), ("gft", 1, 0.3, 0.6),
                                                ("sft", 0, 0.2, 0.3), ("sft", 1, 0.2, 0.5))]
    assert share_of("gft@0.25") == ("gft", 0.25) and share_of("gft") == ("gft", 1.0)
    text = write_report(runs + shares, tmp_path / "report", "test", 2, "gft compare").read_text()
    main_table = text.split("## The `ood` split")[0]
    assert "| gft | 2 |" in main_table and "gft@0.25" not in main_table
    section = text.split("## Data efficiency: stage 1 on a share of the prompts")[1]
    # pass@1 = accuracy - 0.1 in _fake_run: gft after stage 1 20.0 at 0.25 and 35.0 at 1, after GRPO 45.0 and 60.0
    assert "| 0.25 of the prompts: after stage 1 | after GRPO | 1 of the prompts: after stage 1 | after GRPO |" in section
    assert "| gft | 20.0 ± 0.0 | 45.0 ± " in section and "| sft | 10.0 ± 0.0 | 30.0 ± " in section
    claims = json.loads((tmp_path / "report" / "summary.json").read_text())["claims"]
    (efficiency,) = [c for c in claims if "data efficiency" in c["claim"]]
    assert efficiency["claim"].startswith("GFT -> GRPO beats SFT -> GRPO with stage 1 on 0.25 of the prompts")
    assert efficiency["difference"][0] == pytest.approx(0.15) and efficiency["seeds"] == 2  # 0.2, 0.1
    assert (tmp_path / "report" / "data_efficiency.png").read_bytes()[:4] == b"\x89PNG"


def test_the_retain_split_gives_each_pipelines_change_from_the_base_and_the_forgetting_claim(tmp_path):
    """GFT loses 5 and 10 points on retain in stage 1, SFT 30 and 20: GFT - SFT = +25 and +10. GRPO
    from the base, which has no stage 1, has no change after one."""
    runs = [_fake_run(tmp_path / f"{name}{seed}", name, seed, before=0.4, after=0.5, grad_norms=[1.0],
                      retain=(0.8, 0.8 - lost, 0.7 - lost))
            for name, seed, lost in (("gft", 0, 0.05), ("gft", 1, 0.10), ("sft", 0, 0.30), ("sft", 1, 0.20))]
    runs.append(_fake_run(tmp_path / "grpo0", "grpo", 0, before=0.0, after=0.1, grad_norms=[], with_stage1=False,
                          retain=(0.8, 0.75)))
    text = write_report(runs, tmp_path / "report", "test", 2, "gft compare").read_text()
    section = text.split("## Forgetting: the `retain` split")[1]
    assert "| gft | 2 | 80.0 ± 0.0 | -7.5 ± " in section and "| sft | 2 | 80.0 ± 0.0 | -25.0 ± " in section
    assert "| grpo | 1 | 80.0 | - | -5.0 |" in section
    # 25 and 10 points: 17.5 ± 12.706 x 7.5, p = 0.26 (t = 17.5 / 7.5 on 1 degree of freedom); Holm: x 4, as the
    # three claims on the test split are tested too (equal runs, p = 1), capped at 1
    p_forgetting = 1 - 2 * math.atan(17.5 / 7.5) / math.pi
    assert "GFT forgets less than SFT (change on retain after stage 1, GFT's minus SFT's): **inconclusive (Holm-" \
           f"adjusted p = 1)** (difference 17.5 ± 95.3 points, 2 seeds, p = {p_forgetting:.2g};" in text
    (forgetting,) = [c for c in json.loads((tmp_path / "report" / "summary.json").read_text())["claims"]
                     if c["metric"] == "retain_change_stage1"]
    assert forgetting["difference"][0] == pytest.approx(0.175) and forgetting["seeds"] == 2
