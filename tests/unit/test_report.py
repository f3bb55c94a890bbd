"""The training report: one embedded PNG plot per task, the run's facts, atomic writing."""

import base64
import os
import re

import pytest

from stsfusion.model.evaluation.report import ReportError, write_training_report

TASKS = ["spatial", "temporal", "spectral"]


def _history(n_epochs=6):
    return [
        {
            "epoch": e + 1,
            "loss": {t: 1.0 / (e + 1 + i) for i, t in enumerate(TASKS)},
            "c": {t: 1.0 + 0.1 * e * (i + 1) for i, t in enumerate(TASKS)},
            "time_s": 2.5 + e,
        }
        for e in range(n_epochs)
    ]


def _info():
    return {
        "parameters": {"epochs": 6, "kernels": "1,3,5", "note": "<b>not markup</b>"},
        "device": "cpu",
        "time_s": 42.125,
        "peak_memory_mb": 512.5,
        "pca_explained_variance": [0.8, 0.15, 0.04],
        "tasks": TASKS,
    }


def test_report_has_one_plot_per_task_and_the_run_facts(tmp_path):
    path = str(tmp_path / "model_report.html")
    assert write_training_report(path, _history(), _info()) == path
    text = open(path, encoding="utf-8").read()

    plots = re.findall(r'<img class="task-plot" data-task="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', text)
    assert [task for task, _ in plots] == TASKS
    for _, data in plots:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(png) > 5000  # a drawn plot, not an empty canvas
    assert len({data for _, data in plots}) == 3  # each task its own curves

    assert "cpu" in text and "42.12" in text and "512.5 MB" in text
    assert "80.000 %" in text and "99.000 %" in text  # PCA share and cumulative share
    assert "&lt;b&gt;not markup&lt;/b&gt;" in text and "<b>not markup</b>" not in text
    assert "kernels" in text and "1,3,5" in text
    # The per-epoch table holds the last epoch's values.
    assert "<td>6</td><td>7.5</td>" in text
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_tasks_default_to_the_history_keys(tmp_path):
    info = _info()
    del info["tasks"]
    path = str(tmp_path / "r.html")
    write_training_report(path, _history(3), info)
    text = open(path, encoding="utf-8").read()
    assert re.findall(r'data-task="([^"]+)"', text) == TASKS


def test_empty_history_writes_a_report_without_plots(tmp_path):
    path = str(tmp_path / "r.html")
    write_training_report(path, [], _info())
    text = open(path, encoding="utf-8").read()
    assert "No epoch completed" in text and "task-plot" not in text


def test_missing_folder_is_a_clear_error_and_leaves_nothing(tmp_path):
    path = str(tmp_path / "absent" / "r.html")
    with pytest.raises(ReportError, match="does not exist"):
        write_training_report(path, _history(2), _info())
    assert not os.path.exists(tmp_path / "absent")


def test_rewriting_replaces_the_old_report(tmp_path):
    path = str(tmp_path / "r.html")
    open(path, "w").write("old")
    write_training_report(path, _history(2), _info())
    assert open(path, encoding="utf-8").read().startswith("<!DOCTYPE html>")


def test_the_early_stop_s_probes_are_in_the_report(tmp_path):
    path = str(tmp_path / "r.html")
    probes = [{"epoch": 9, "CC": 0.9672}, {"epoch": 12, "CC": 0.9681}, {"epoch": 15, "CC": 0.9601}]
    write_training_report(
        path, _history(), dict(_info(), early_stop={"probes": probes, "stopped_after": 15, "kept": 12})
    )
    text = open(path, encoding="utf-8").read()
    assert "epoch 9: 0.9672, epoch 12: 0.9681, epoch 15: 0.9601" in text
    assert "Stopped early after epoch 15: training went on from epoch 12&#x27;s network" in text
    write_training_report(path, _history(), dict(_info(), early_stop={"probes": probes[:2]}))
    assert "No early stop" in open(path, encoding="utf-8").read()
    write_training_report(path, _history(), _info())  # a model trained without: nothing said
    assert "Early stop" not in open(path, encoding="utf-8").read()
