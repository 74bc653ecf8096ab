import csv
import json
import os
import time

import pytest
from omegaconf import OmegaConf

from fned_lightning.report import main as report_main


def fake_run(
    root,
    name,
    metrics=None,
    model="fned",
    data="cifar10",
    anomaly_class="horse",
    protocol="honest",
    model_config=None,
    failure=None,
):
    """A run folder as train.py leaves it: .hydra/ always, metrics.json (and the resolved config.yaml, here
    only its `model`) only when it finished, failed.txt (`failure`) when it raised."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(
        {"anomaly_class": anomaly_class, "protocol": protocol, "data": {"root": f"/d/{data}"}},
        run / ".hydra/config.yaml",
    )
    OmegaConf.save({"hydra": {"runtime": {"choices": {"model": model, "data": data}}}}, run / ".hydra/hydra.yaml")
    if failure is not None:
        (run / "failed.txt").write_text(failure + "\n")
    if metrics is not None:
        base = {
            "model": model,
            "data": data,
            "anomaly_class": anomaly_class,
            "protocol": protocol,
            "data_root": f"/d/{data}",
        }
        (run / "metrics.json").write_text(json.dumps(base | metrics))
        OmegaConf.save({"model": model_config or {}}, run / "config.yaml")


def scores(auroc, auprc=0.5, f1=0.6, recall=0.7, precision=0.8):
    return {"auroc": auroc, "auprc": auprc, "f1": f1, "recall": recall, "precision": precision}


def test_tables_average_seeds_and_show_missing_and_failed_runs(tmp_path, capsys):
    runs = tmp_path / "multirun"
    fake_run(runs, "0", scores(0.8, auprc=0.6) | {"epochs": 2, "train_images_per_epoch": 1280, "n_train": 42750})
    fake_run(runs, "1", scores(0.9, auprc=0.7) | {"epochs": 2, "n_train": 42750})  # a second seed; budget: all images
    fake_run(runs, "2", scores(0.5), anomaly_class="airplane", model="ganomaly")
    fake_run(runs, "3", None, anomaly_class="cat", model="ganomaly", failure="RuntimeError: out of memory")
    fake_run(runs, "4", scores(0.95), protocol="paper")
    fake_run(runs, "5", scores(0.7, auprc=0.9), data="folder", anomaly_class=None, model="skip_ganomaly")
    report_main([str(runs), "--wandb", "off"])
    out = runs / "report"
    with open(out / "table1_auroc.csv") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    assert set(rows) == {"GANomaly", "FNED", "FNED [protocol=paper]"}
    assert rows["FNED"]["horse"] == "0.850 ± 0.071 (n=2)"
    assert rows["FNED"]["plane"] == "—"
    assert rows["FNED"]["avg"] == "0.850 (1/10 classes)"
    assert rows["FNED"]["budget"] == "2 ep x 1,280 img, 2 ep x 42,750 img"  # every row says what it trained on
    assert rows["GANomaly"]["plane"] == "0.500" and rows["GANomaly"]["cat"] == "failed"
    assert rows["FNED [protocol=paper]"]["horse"] == "0.950"
    with open(out / "table3_folder.csv") as file:
        (folder_row,) = list(csv.DictReader(file))
    assert (
        folder_row["model"] == "Skip-GANomaly" and folder_row["AUPRC"] == "0.900" and folder_row["data set"] == "folder"
    )
    text = capsys.readouterr().out
    assert "Table 1" in text and "FNED (paper, its protocol)" in text and "5 finished, 1 failed;" in text
    assert f"- {runs / '3'}: RuntimeError: out of memory" in text  # the error, quoted from failed.txt
    assert (out / "auroc_bars.png").stat().st_size > 0 and (out / "tables.md").exists()


def test_a_both_run_gives_an_honest_row_a_paper_row_and_their_gap(tmp_path):
    runs = tmp_path / "multirun"
    paper = {f"paper_{k}": v for k, v in scores(0.9, auprc=0.8).items()}
    fake_run(runs, "0", scores(0.7, auprc=0.6) | paper, protocol="both")
    fake_run(
        runs,
        "1",
        scores(0.75) | {f"paper_{k}": v for k, v in scores(0.85).items()},
        protocol="both",
        data="folder",
        anomaly_class=None,
    )
    report_main([str(runs), "--wandb", "off"])
    with open(runs / "report" / "table1_auroc.csv") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    assert rows["FNED"]["horse"] == "0.700" and rows["FNED [protocol=paper]"]["horse"] == "0.900"
    assert rows["FNED"]["paper - honest"] == "" and rows["FNED [protocol=paper]"]["paper - honest"] == "+0.200"
    with open(runs / "report" / "table2_auprc.csv") as file:
        assert {row["model"]: row["horse"] for row in csv.DictReader(file)} == {
            "FNED": "0.600",
            "FNED [protocol=paper]": "0.800",
        }
    with open(runs / "report" / "table3_folder.csv") as file:
        folder = {row["model"]: row for row in csv.DictReader(file)}
    assert folder["FNED"]["AUROC"] == "0.750" and folder["FNED [protocol=paper]"]["AUROC paper - honest"] == "+0.100"
    assert "2 finished, 0 failed" in (runs / "report" / "tables.md").read_text()


def test_empty_folder_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        report_main([str(tmp_path), "--wandb", "off"])
    assert exit.value.code == 2 and "no runs under" in capsys.readouterr().err


def test_runs_with_masks_get_a_localisation_table_beside_table_3(tmp_path):
    runs = tmp_path / "multirun"
    pixels = {
        "auroc_score_paper": 0.7,
        "auroc_score_map_max": 0.8,
        "pixel_auroc": 0.9,
        "pixel_aupro": 0.6,
        "pixel_f1": 0.3,
    }
    fake_run(runs, "0", scores(0.7) | pixels, data="synthetic", anomaly_class=None)
    fake_run(runs, "1", scores(0.7) | pixels | {"pixel_aupro": 0.4}, data="synthetic", anomaly_class=None)
    # no masks
    fake_run(runs, "2", scores(0.6) | {"pixel_auroc": None}, data="folder", anomaly_class=None, model="ganomaly")
    report_main([str(runs), "--wandb", "off"])
    with open(runs / "report" / "table3_localisation.csv") as file:
        (row,) = list(csv.DictReader(file))
    assert (row["data set"], row["model"]) == ("synthetic", "FNED")
    assert row["AUROC (map max)"] == "0.800 ± 0.000 (n=2)" and row["AUPRO (30% FPR)"] == "0.500 ± 0.141 (n=2)"
    assert "Table 3, localisation" in (runs / "report" / "tables.md").read_text()


def test_remedies_against_copying_name_their_rows_and_painted_validation_defects_get_a_table(tmp_path):
    runs = tmp_path / "multirun"
    painted = {
        "val_auroc_score_paper": 0.8,
        "val_auroc_score_map_max": 0.9,
        "val_pixel_auroc": 0.95,
        "val_defect_residual_ratio": 3.0,
    }
    paper = {f"paper_{k}": v for k, v in scores(0.65).items()}
    fake_run(
        runs,
        "0",
        scores(0.5) | painted | paper,
        data="folder",
        anomaly_class=None,
        protocol="both",
        model_config={"train_corruption": "none", "generator": {"skip_levels": 0}},
    )
    fake_run(
        runs,
        "1",
        scores(0.6) | painted | {"val_defect_residual_ratio": 5.0},
        data="folder",
        anomaly_class=None,
        model_config={"train_corruption": "patches", "corruption_strength": 0.25, "generator": {"skip_levels": 1}},
    )
    report_main([str(runs), "--wandb", "off"])
    with open(runs / "report" / "table3_folder.csv") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    assert list(rows) == ["FNED", "FNED [protocol=paper]", "FNED (patches 0.25, skip_levels=1)"]
    assert rows["FNED [protocol=paper]"]["AUROC paper - honest"] == "+0.150"
    with open(runs / "report" / "painted_validation_defects.csv") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    assert list(rows) == ["FNED", "FNED (patches 0.25, skip_levels=1)"]  # honest rows only: validation is one
    assert rows["FNED (patches 0.25, skip_levels=1)"]["residual defect / normal"] == "5.000"


def test_real_validation_defects_get_a_table_beside_the_test_auroc_and_a_head_names_its_row(tmp_path):
    runs = tmp_path / "multirun"
    for seed, (real, test) in enumerate([(0.7, 0.6), (0.9, 0.8)]):
        fake_run(
            runs,
            f"head{seed}",
            scores(test) | {"val_real_auroc": real, "val_real_auprc": 0.5},
            data="folder",
            anomaly_class=None,
            model_config={"train_corruption": "none", "head": {"width": 32}},
        )
    fake_run(runs, "plain", scores(0.5), data="folder", anomaly_class=None)  # no real validation defects: no row
    report_main([str(runs), "--wandb", "off"])
    with open(runs / "report" / "real_validation_defects.csv") as file:
        rows = {row["model"]: row for row in csv.DictReader(file)}
    assert list(rows) == ["FNED (segmentation head 32)"]
    assert rows["FNED (segmentation head 32)"]["AUROC (its image score)"].startswith("0.800")
    assert rows["FNED (segmentation head 32)"]["test AUROC (honest)"].startswith("0.700")


def age(run, seconds):
    """Make everything in a run folder look last written `seconds` ago."""
    then = time.time() - seconds
    for path in [run, *run.rglob("*")]:
        os.utime(path, (then, then))


def test_a_run_still_being_written_is_running_not_failed_and_only_failed_txt_means_failed(tmp_path, capsys):
    runs = tmp_path / "multirun"
    fake_run(runs, "0", scores(0.8))
    fake_run(runs, "1", None, anomaly_class="cat")  # its train.log and checkpoints being written now
    (runs / "1" / "train.log").write_text("epoch 3\n")
    fake_run(runs, "2", None, anomaly_class="dog", failure="ValueError: bad")
    fake_run(runs, "3", None, anomaly_class="deer")  # killed two hours ago: no failed.txt, nothing written since
    age(runs / "3", 2 * 3600)
    fake_run(runs, "4", None, data="folder", anomaly_class=None, model="ganomaly")  # a folder run, running
    fake_run(runs, "5", None, anomaly_class="frog", failure="RuntimeError: killed")  # failed a day ago, rerun now
    age(runs / "5", 24 * 3600)
    (runs / "5" / "train.log").write_text("resuming\n")
    fake_run(runs, "6", None, anomaly_class="ship", failure="RuntimeError: old")  # failed, rerun, then killed
    age(runs / "6", 5 * 3600)
    (runs / "6" / "train.log").write_text("resuming\n")  # restarted 2 hours after it failed
    for path in (runs / "6", runs / "6" / "train.log"):
        os.utime(path, (time.time() - 3 * 3600,) * 2)
    report_main([str(runs), "--wandb", "off"])
    text = capsys.readouterr().out
    with open(runs / "report" / "table1_auroc.csv") as file:
        (row,) = list(csv.DictReader(file))
    states = row["cat"], row["dog"], row["deer"], row["frog"], row["ship"]
    assert states == ("running", "failed", "stopped", "running", "stopped")
    assert row["horse"] == "0.800"
    with open(runs / "report" / "table3_folder.csv") as file:
        (folder_row,) = list(csv.DictReader(file))
    assert folder_row["AUROC"] == "running"
    assert "Runs: 1 finished, 1 failed, 3 running, 2 stopped;" in text
    assert f"Running runs (no metrics.json yet; written to in the last 60 min):\n\n- {runs / '1'}\n" in text
    assert f"- {runs / '2'}: ValueError: bad" in text and "Stopped runs" in text
    report_main([str(runs), "--wandb", "off", "--running-within", "300", "--out", str(tmp_path / "r")])
    # two and three hours are within 300 minutes
    assert "Runs: 1 finished, 1 failed, 5 running;" in capsys.readouterr().out


def test_the_report_is_never_written_into_a_run_folder_that_has_not_finished(tmp_path, capsys):
    outputs = tmp_path / "outputs" / "fned" / "horse"
    fake_run(outputs, "2025-01-01_10-00-00", None)  # a single run, still being written
    report_main([str(outputs / "2025-01-01_10-00-00"), "--wandb", "off"])
    assert not (outputs / "2025-01-01_10-00-00" / "report").exists()
    assert (outputs / "report" / "tables.md").is_file()  # beside the run, not in it
    with pytest.raises(SystemExit) as exit:  # nor when asked to
        report_main([str(outputs), "--wandb", "off", "--out", str(outputs / "2025-01-01_10-00-00" / "tables")])
    assert exit.value.code == 2 and "a run that has not finished" in capsys.readouterr().err
    assert not (outputs / "2025-01-01_10-00-00" / "tables").exists()


def test_the_papers_fastener_numbers_are_a_table_of_their_own_never_rows_of_ours(tmp_path):
    runs = tmp_path / "multirun"
    fake_run(runs, "0", scores(0.6) | {"epochs": 1, "n_train": 320}, data="mvtec_screw", anomaly_class=None)
    report_main([str(runs), "--wandb", "off"])
    text = (runs / "report" / "tables.md").read_text()
    ours, theirs = text.split("### Table 3")[1].split("### The paper's Table 3")
    assert "mvtec_screw" in ours and "(paper, its protocol)" not in ours and "fasteners" not in ours.split("\n\n", 1)[1]
    assert "railway fasteners" in theirs and "FNED (paper, its protocol) | 15 ep x all img | 0.987" in theirs
    assert "mvtec_screw" not in theirs
    with open(runs / "report" / "table3_folder.csv") as file:
        assert [row["model"] for row in csv.DictReader(file)] == ["FNED"]
