"""``tb-bn report`` on real logdirs (demo scenarios at test size) and on broken ones."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
from demo_runs import DEMO_PATH, scenario_run  # noqa: E402

from tb_bn_plugin.cli import main  # noqa: E402

TOP_KEYS = {"schema_version", "logdir", "fail_on", "failed", "counts", "bad_files", "runs"}
RUN_KEYS = {
    "run",
    "errors",
    "gap",
    "layers",
    "step_functions",
    "has_graph",
    "findings",
    "graph_findings",
    "counts",
}
LAYER_KEYS = {
    "calls",
    "call_divergence",
    "path",
    "index",
    "channels",
    "epsilon",
    "momentum",
    "logged_steps",
    "first_step",
    "last_step",
    "mode",
    "trainable",
    "count",
    "trained_step",
    "mean_shift",
    "log_var_ratio",
    "moving_mean",
    "moving_variance",
    "gap",
}
FINDING_KEYS = {"code", "severity", "title", "layers", "channels", "evidence", "fix"}
GRAPH_FINDING_KEYS = {"code", "severity", "title", "sites", "evidence", "fix", "site_layers"}


def logdir_with(tmp_path, tmp_path_factory, *scenarios: str) -> str:
    """A fresh logdir holding copies of the given scenario runs (each trained once per session)."""
    logdir = tmp_path / "logs"
    for name in scenarios:
        shutil.copytree(scenario_run(tmp_path_factory, name), logdir / name)
    return str(logdir)


def report(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["report", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return status, out, err


def events_file(run_dir) -> str:
    (path,) = glob.glob(os.path.join(str(run_dir), "events.out.tfevents*"))
    return path


def test_human_output_names_layers_findings_and_fixes(tmp_path, tmp_path_factory, capsys):
    logdir = logdir_with(tmp_path, tmp_path_factory, "healthy", "momentum-one")
    status, out, err = report(capsys, logdir, "--fail-on", "never")
    assert status == 0 and err == ""
    assert "== run healthy" in out and "== run momentum-one" in out
    for layer in ("input_bn", "bn0", "bn1", "dense_bn"):
        assert layer in out
    assert "ERROR momentum-one" in out
    assert "evidence: momentum=1" in out
    flat = " ".join(out.split())  # the fix is wrapped to the text width
    assert "fix: With momentum=1" in flat and "Use momentum 0.9-0.99" in flat
    assert "moving mean [min, max]" in out and "compound gap" in out
    # Wrapped to the text width.
    assert (
        max(
            len(line)
            for line in out.splitlines()
            if line.lstrip().startswith(("fix:", "evidence:"))
        )
        <= 100
    )


def test_human_output_renders_nested_evidence(tmp_path, tmp_path_factory, capsys):
    """The slow-momentum demo's ema-error finding holds evidence per layer (a nested mapping)."""
    logdir = logdir_with(tmp_path, tmp_path_factory, "slow-momentum")
    status, out, err = report(capsys, logdir, "--fail-on", "never")
    assert status == 0 and err == ""
    text = " ".join(out.split())  # undo the wrapping
    status, out, _ = report(capsys, logdir, "--json", "--fail-on", "never")
    (finding,) = [f for f in json.loads(out)["runs"][0]["findings"] if f["code"] == "ema-error"]
    shift = finding["evidence"]["layers"]["input_bn"]["mean_shift"]
    assert f"layers={{input_bn: {{mean_shift: {shift:.4g}," in text


def test_json_matches_schema(tmp_path, tmp_path_factory, capsys):
    logdir = logdir_with(tmp_path, tmp_path_factory, "healthy", "momentum-one", "frozen-bn")
    status, out, _ = report(capsys, logdir, "--json")
    assert status == 1
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(data) == TOP_KEYS
    assert data["schema_version"] == 1 and data["fail_on"] == "error" and data["failed"] is True
    assert data["bad_files"] == []
    assert [r["run"] for r in data["runs"]] == ["frozen-bn", "healthy", "momentum-one"]
    for run in data["runs"]:
        assert set(run) == RUN_KEYS
        assert run["step_functions"] is None  # TensorFlow runs have a graph instead
        assert [layer["path"] for layer in run["layers"]] == ["input_bn", "bn0", "bn1", "dense_bn"]
        for layer in run["layers"]:
            assert set(layer) == LAYER_KEYS
            assert layer["mode"] in ("train", "inference")
            assert set(layer["moving_mean"]) == {"mean", "min", "max"}
            assert layer["logged_steps"] >= 2
            assert layer["calls"] == 1 and layer["call_divergence"] is None
        for finding in run["findings"]:
            assert set(finding) == FINDING_KEYS
            assert finding["severity"] in ("error", "warning", "info") and finding["fix"]
        assert run["counts"] == {
            s: sum(f["severity"] == s for f in run["findings"])
            for s in ("error", "warning", "info")
        }
    by_run = {r["run"]: r for r in data["runs"]}
    assert {f["code"] for f in by_run["momentum-one"]["findings"]} >= {"momentum-one"}
    assert by_run["momentum-one"]["layers"][0]["momentum"] == 1.0
    frozen = by_run["frozen-bn"]["layers"][0]
    assert (
        frozen["mode"] == "inference"
        and frozen["trainable"] is False
        and frozen["mean_shift"] is None
    )
    healthy = by_run["healthy"]["layers"][0]
    assert healthy["mode"] == "train" and healthy["count"] > 0 and healthy["mean_shift"]["max"] >= 0
    if by_run["healthy"]["gap"] is not None:
        assert set(by_run["healthy"]["gap"]) == {
            "step",
            "train_loss",
            "inference_loss",
            "relative_loss_gap",
            "loss_reference",
            "scaled_loss_gap",
        }
        gap = by_run["healthy"]["gap"]
        scale = max(abs(gap["train_loss"]), 0.1 * gap["loss_reference"])
        assert gap["scaled_loss_gap"] == pytest.approx(
            abs(gap["inference_loss"] - gap["train_loss"]) / scale
        )
        assert set(healthy["gap"]) == {"local", "compound", "attribution"}


def test_fail_on_levels(tmp_path, tmp_path_factory, capsys):
    clean = logdir_with(tmp_path / "clean", tmp_path_factory, "healthy")
    info = logdir_with(tmp_path / "info", tmp_path_factory, "frozen-bn")
    error = logdir_with(tmp_path / "error", tmp_path_factory, "momentum-one")
    expectations = [
        (clean, "info", 0),
        (clean, "warning", 0),
        (clean, "error", 0),
        (info, "info", 1),
        (info, "warning", 0),
        (info, "error", 0),
        (info, "never", 0),
        (error, "error", 1),
        (error, "warning", 1),
        (error, "never", 0),
    ]
    for logdir, level, expected in expectations:
        status, out, _ = report(capsys, logdir, "--fail-on", level)
        assert status == expected, (logdir, level, out)
    assert report(capsys, error)[0] == 1  # default: --fail-on error


def write_graph_run(logdir, name: str, wire_updates: bool) -> None:
    """Seed 004's TF1 graph (Switch/Merge, update ops wired or not) written by ``tb-bn graph``."""
    from _bn_graphs import build_seed004_graph

    model = os.path.join(os.path.dirname(logdir), f"{name}.pb")
    with open(model, "wb") as f:
        f.write(build_seed004_graph(wire_updates=wire_updates).SerializeToString())
    assert main(["graph", model, "--logdir", logdir]) == 0


def test_graph_findings_of_stored_graphs(tmp_path, tmp_path_factory, capsys):
    """Runs written by ``tb-bn graph`` are reported with their graph's findings, counted like
    the statistics ones; a logged run's graph (the callback's) is diagnosed too."""
    logdir = logdir_with(tmp_path, tmp_path_factory, "healthy", "momentum-one")
    write_graph_run(logdir, "unwired", wire_updates=False)
    write_graph_run(logdir, "wired", wire_updates=True)
    capsys.readouterr()

    status, out, err = report(capsys, logdir)
    assert status == 1 and err == ""  # momentum-one's errors
    text = " ".join(out.split())
    assert "== run unwired: a graph, no BN Internals statistics findings: 1 warning" in text
    assert (
        "graph findings (Graph view): WARNING update-ops-not-wired (sites: bn) - Moving-average "
        "updates are never run site bn: nothing that runs each step depends on "
        "bn/AssignMovingAvg, bn/AssignMovingAvg_1 fix: In graph mode" in text
    )
    assert (
        "== run wired: a graph, no BN Internals statistics findings: none graph findings: none"
        in text
    )
    assert "site convnet_1/bn0_1 (layer bn0): momentum 1 read from" in text

    status, out, _ = report(capsys, logdir, "--json", "--fail-on", "never")
    data = json.loads(out)
    runs = {r["run"]: r for r in data["runs"]}
    assert list(runs) == ["healthy", "momentum-one", "unwired", "wired"]
    for run in runs.values():
        assert set(run) == RUN_KEYS and run["has_graph"] is True
        for finding in run["graph_findings"]:
            assert set(finding) == GRAPH_FINDING_KEYS
        # findings ends with the graph findings; counts are over findings.
        tail = run["findings"][len(run["findings"]) - len(run["graph_findings"]) :]
        assert [(f["code"], f["layers"], f["evidence"]) for f in tail] == [
            (f["code"], f["sites"], f["evidence"]) for f in run["graph_findings"]
        ]
        assert run["counts"] == {
            s: sum(f["severity"] == s for f in run["findings"])
            for s in ("error", "warning", "info")
        }
    (unwired,) = runs["unwired"]["graph_findings"]
    assert (unwired["code"], unwired["severity"], unwired["sites"]) == (
        "update-ops-not-wired",
        "warning",
        ["bn"],
    )
    assert unwired["site_layers"] == {}  # no logged layers to name
    assert runs["unwired"]["layers"] == [] and runs["unwired"]["gap"] is None
    assert runs["unwired"]["counts"] == {"error": 0, "warning": 1, "info": 0}
    assert runs["wired"]["findings"] == [] and runs["healthy"]["graph_findings"] == []
    (graph_momentum,) = runs["momentum-one"]["graph_findings"]
    assert graph_momentum["code"] == "momentum-one" and graph_momentum["severity"] == "error"
    # Each of the traced graph's sites (op scopes) belongs to the logged layer of its name.
    assert graph_momentum["site_layers"] == {
        f"convnet_1/{layer}_1": layer for layer in ("bn0", "bn1", "dense_bn", "input_bn")
    }
    statistics = [f for f in runs["momentum-one"]["findings"] if f["code"] == "momentum-one"]
    assert len(statistics) == 5  # one per logged layer, and the graph's
    assert data["counts"]["warning"] == sum(r["counts"]["warning"] for r in runs.values())

    # The same findings as the plugin's overview and Diagnostics (one implementation).
    from tb_bn_plugin.plugin.routes.graph import graph_findings
    from tb_bn_plugin.reading.provider import open_logdir

    source = open_logdir(logdir)
    for name, run in runs.items():
        paths = [layer["path"] for layer in run["layers"]]
        assert run["graph_findings"] == graph_findings(source, name, paths)

    # A graph finding's severity decides the exit status like any other's.
    for level, expected in (("error", 0), ("warning", 1), ("info", 1), ("never", 0)):
        status, out, _ = report(capsys, logdir, "--run", "unwired", "--fail-on", level)
        assert status == expected, (level, out)
    status, out, _ = report(capsys, logdir, "--run", "wired", "--fail-on", "info", "--json")
    assert status == 0 and json.loads(out)["failed"] is False


def test_graph_only_logdir(tmp_path, capsys):
    """A logdir holding only a ``tb-bn graph`` run is reported (it used to be 'no BN data')."""
    logdir = str(tmp_path / "logs")
    write_graph_run(logdir, "unwired", wire_updates=False)
    capsys.readouterr()
    status, out, err = report(capsys, logdir, "--fail-on", "warning")
    assert status == 1 and err == ""
    assert "WARNING update-ops-not-wired" in out and "FAIL: fail-on warning" in out
    status, _, err = report(capsys, logdir, "--run", "nope")
    assert status == 2 and "'nope'" in err and "unwired" in err


def test_unreadable_stored_graph_is_a_read_error(tmp_path, capsys):
    """A stored graph that is not a GraphDef: the run lists a read error, no finding, exit 0."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    logdir = tmp_path / "logs"
    writer = EventFileWriter(str(logdir / "broken"))
    writer.add_event(event_pb2.Event(step=0, wall_time=1.0, graph_def=b"\xff\xff\xff"))
    writer.close()
    status, out, err = report(capsys, str(logdir), "--fail-on", "info", "--json")
    assert status == 0 and err == ""
    (run,) = json.loads(out)["runs"]
    assert run["run"] == "broken" and run["findings"] == [] and run["graph_findings"] == []
    assert run["has_graph"] is False
    (error,) = run["errors"]
    assert error.startswith("run 'broken': stored graph is not a GraphDef: ")
    status, out, _ = report(capsys, str(logdir))
    assert "read error: run 'broken': stored graph is not a GraphDef" in out


def test_run_filter(tmp_path, tmp_path_factory, capsys):
    logdir = logdir_with(tmp_path, tmp_path_factory, "healthy", "momentum-one")
    status, out, _ = report(capsys, logdir, "--run", "healthy", "--json")
    assert status == 0
    assert [r["run"] for r in json.loads(out)["runs"]] == ["healthy"]
    status, _, err = report(capsys, logdir, "--run", "nope")
    assert status == 2 and "'nope'" in err and "healthy" in err


def test_missing_empty_and_no_bn_logdirs(tmp_path, capsys):
    status, out, err = report(capsys, str(tmp_path / "missing"))
    assert status == 2 and out == "" and "does not exist" in err
    (tmp_path / "empty").mkdir()
    status, _, err = report(capsys, str(tmp_path / "empty"))
    assert status == 2 and "no TensorBoard event files" in err

    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(tmp_path / "scalars" / "train"))
    with writer.as_default():
        tf.summary.scalar("loss", 1.0, step=0)
    writer.close()
    status, _, err = report(capsys, str(tmp_path / "scalars"))
    assert status == 2 and "no BatchNorm data" in err and "BatchNormCallback" in err


def test_usage_error_exit_status(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "somewhere", "--fail-on", "sometimes"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_corrupt_event_file_is_named_and_other_runs_reported(tmp_path, tmp_path_factory, capsys):
    logdir = logdir_with(tmp_path, tmp_path_factory, "healthy")
    bad = tmp_path / "logs" / "broken" / "events.out.tfevents.123.host.1.v2"
    bad.parent.mkdir()
    bad.write_bytes(os.urandom(64) + b"this is not a TFRecord file" * 10)
    status, out, err = report(capsys, logdir)
    assert status == 2
    assert "== run healthy" in out and "input_bn" in out
    assert str(bad) in err and "corrupt" in err
    assert str(bad) in out  # also listed under the report


def test_truncated_event_file_reports_readable_part(tmp_path, tmp_path_factory, capsys):
    logdir = logdir_with(tmp_path, tmp_path_factory, "healthy", "momentum-one")
    path = events_file(os.path.join(logdir, "momentum-one"))
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) - 100])  # cut inside the last records, as a crashed writer would
    status, out, err = report(capsys, logdir, "--json")
    assert status == 2
    assert path in err and "truncated" in err
    result = json.loads(out)
    (bad,) = result["bad_files"]
    assert bad["path"] == path and bad["run"] == "momentum-one" and bad["kind"] == "truncated"
    assert bad["records_read"] > 0
    runs = {r["run"]: r for r in result["runs"]}
    assert set(runs) == {"healthy", "momentum-one"}  # the readable half is still reported
    assert any(f["code"] == "momentum-one" for f in runs["momentum-one"]["findings"])


def test_check_event_files(tmp_path, tmp_path_factory):
    from tb_bn_plugin.reading.event_files import check_event_files

    logdir = logdir_with(tmp_path, tmp_path_factory, "healthy")
    assert check_event_files(logdir) == []
    good = events_file(os.path.join(logdir, "healthy"))
    data = open(good, "rb").read()
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    run_dir = os.path.join(logdir, "a", "b")
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "events.out.tfevents.1.x"), "wb") as f:
        f.write(bytes(flipped))
    open(os.path.join(logdir, "events.out.tfevents.2.empty"), "wb").close()  # empty: fine
    (bad,) = check_event_files(logdir)
    assert (
        bad.run == "a/b"
        and bad.kind == "corrupt"
        and bad.offset is not None
        and bad.records_read > 0
    )
    assert bad.path in bad.describe()


def test_demo_script_smoke(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    logdir = tmp_path / "tmp"
    result = subprocess.run(
        [
            sys.executable,
            DEMO_PATH,
            "--logdir",
            str(logdir),
            "--scenarios",
            "healthy",
            "momentum-one",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[1/2] healthy" in result.stdout and "[2/2] momentum-one" in result.stdout
    assert sorted(os.listdir(logdir)) == ["healthy", "momentum-one"]
    assert glob.glob(str(logdir / "healthy" / "events.out.tfevents*"))
