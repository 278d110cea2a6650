"""Corrupt or foreign files are reported and skipped (records) or ignored and rebuilt (caches), never a
traceback; killed writers' temporary files are swept; shared memos are updated under a lock."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from benchmark.atomic import STALE_SECONDS, sweep_stale_temps
from benchmark.cache import cache_dir_override
from benchmark.features import extract_features
from benchmark.records import Identity, ResultRecord, load_records, metric, record_path, write_record
from benchmark.runner import Cell, Runner, RunSettings
from cli import cli
from evaluators.base import ExtractionSettings

VALID = ResultRecord(identity=Identity("tiny-cnn", "synthderm-mini", "knn"),
                     metrics={"balanced_accuracy": metric(0.5, (0.4, 0.6)), "accuracy": metric(0.6)},
                     primary_metric="balanced_accuracy", protocol={"evaluator": "knn"},
                     provenance={"encoder_kind": "random"}).to_json()


def _broken(change) -> str:
    data = json.loads(json.dumps(VALID))
    change(data)
    return json.dumps(data)


BROKEN = {  # file name -> content: every kind of file a results folder can end up holding
    "list": "[]",
    "bare-number-metric": _broken(lambda d: d["metrics"].update(balanced_accuracy=0.5)),
    "string-metric": _broken(lambda d: d["metrics"].update(balanced_accuracy="0.5")),
    "string-value": _broken(lambda d: d["metrics"]["balanced_accuracy"].update(value="high")),
    "ci-x": _broken(lambda d: d["metrics"]["balanced_accuracy"].update(ci="x")),
    "ci-three": _broken(lambda d: d["metrics"]["balanced_accuracy"].update(ci=[1, 2, 3])),
    "no-metrics": _broken(lambda d: d.pop("metrics")),
    "identity-string": _broken(lambda d: d.update(identity="tiny-cnn")),
    "identity-missing-key": _broken(lambda d: d["identity"].pop("dataset")),
    "protocol-list": _broken(lambda d: d.update(protocol=[1])),
    "primary-not-a-metric": _broken(lambda d: d.update(primary_metric="auroc")),
    "unknown-key": _broken(lambda d: d.update(colour="blue")),
    "schema-2": _broken(lambda d: d.update(schema_version=2)),
    "detail-not-list": _broken(lambda d: d["extra"].update(detail_metrics="accuracy")),
    "truncated": json.dumps(VALID)[:50],
    "empty": "",
    "null": "null",
}


def _write_broken(results_dir: Path) -> Path:
    folder = results_dir / "records" / "knn" / "synthderm-mini"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in BROKEN.items():
        (folder / f"{name}.json").write_text(text)
    (folder / "bad-utf8.json").write_bytes(b"\xff\xfe{")
    return folder


def test_every_kind_of_broken_record_is_reported_and_skipped(results_dir):
    write_record(ResultRecord.from_json(VALID), results_dir)
    _write_broken(results_dir)
    records, errors = load_records(results_dir)
    assert [r.identity.encoder for r in records] == ["tiny-cnn"]
    assert sorted(path.stem for path, _ in errors) == sorted([*BROKEN, "bad-utf8"])
    reasons = {path.stem: reason for path, reason in errors}
    assert "holds a list" in reasons["list"] and "ci must be null or [low, high]" in reasons["ci-x"]
    assert "missing keys ['metrics']" in reasons["no-metrics"] and "unknown keys ['colour']" in reasons["unknown-key"]
    result = CliRunner().invoke(cli, ["leaderboard", "--results", str(results_dir)])
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "| tiny-cnn" in result.output
    assert result.output.count("warning: skipped unreadable record") == len(BROKEN) + 1


def test_runner_recomputes_an_unreadable_record(results_dir, tiny_encoder, mini_synthderm):
    settings = RunSettings(results_dir=results_dir, extraction=ExtractionSettings(torch.device("cpu"), None, num_workers=0))
    cell = Cell("tiny-cnn", "synthderm-mini", "knn", overrides={"ks": [5], "primary_k": 5})
    path = Runner(settings).run(cell).path
    for text in ('{"metrics": {"balanced_accuracy": 0.5}}', "[]"):
        path.write_text(text)
        plan = Runner(settings).plan(cell)
        assert plan.action == "recompute" and "record unreadable" in plan.reason
        assert Runner(settings).run(cell).status == "done"
        assert load_records(results_dir) == ([ResultRecord.from_json(json.loads(path.read_text()))], [])


def _tiny_dataset():
    from tests.probe_helpers import array_dataset
    return array_dataset()


@pytest.mark.parametrize("keep", [0, 30, 0.5, -20])
def test_a_truncated_feature_cache_is_ignored_and_rewritten(tmp_path, tiny_encoder, caplog, keep):
    encoder, dataset = tiny_encoder.build(None), _tiny_dataset()
    first = extract_features(encoder, dataset, cache_dir=tmp_path, num_workers=0)
    (cache_file,) = (tmp_path / "features").rglob("*.npz")
    data = cache_file.read_bytes()
    cache_file.write_bytes(data[:int(len(data) * keep) if isinstance(keep, float) else keep])
    with caplog.at_level(logging.WARNING, logger="benchmark.features"):
        again = extract_features(encoder, dataset, cache_dir=tmp_path, num_workers=0)
    assert not again.meta["cache_hit"] and np.array_equal(first.x, again.x)
    assert "re-extracting" in caplog.text
    assert extract_features(encoder, dataset, cache_dir=tmp_path, num_workers=0).meta["cache_hit"]  # rewritten whole


def test_a_truncated_synthderm_render_is_ignored_and_rendered_again(tmp_path, monkeypatch, caplog):
    from datasets import synthderm
    renders = []

    def fake_render(seed, n_lesions, image_size):  # the cache logic is under test, not the renderer
        renders.append(seed)
        meta = pd.DataFrame({"image_id": [f"i{k}" for k in range(6)], "label": [0, 1] * 3, "lesion_id": list("aabbcc")})
        return np.full((6, image_size, image_size, 3), seed, dtype=np.uint8), meta
    monkeypatch.setattr(synthderm, "generate_synthderm", fake_render)
    with cache_dir_override(tmp_path):
        images, _ = synthderm.load_synthderm_arrays(7, 6, 8)
        (cached,) = (tmp_path / "synthderm").glob("*.npz")
        cached.write_bytes(cached.read_bytes()[:100])
        with caplog.at_level(logging.WARNING, logger="datasets.synthderm"):
            again, meta = synthderm.load_synthderm_arrays(7, 6, 8)
        assert "rendering again" in caplog.text and np.array_equal(images, again) and len(meta) == 6
        synthderm.load_synthderm_arrays(7, 6, 8)
    assert renders == [7, 7]  # rendered, rendered again once, then read back


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporary_files_of_killed_writers_are_swept_on_the_next_write(tmp_path):
    from benchmark.atomic import _host
    record = ResultRecord.from_json(VALID)
    folder = record_path(tmp_path, record.identity).parent
    folder.mkdir(parents=True)
    host, dead, alive = _host(), _dead_pid(), os.getppid()
    stale = [folder / f".a.json.{dead}.tmp",  # the old naming, as a kill left it
             folder / f".a.json.{dead}-0a1b2c@{host}.tmp",
             folder / f".b.json.{alive}-0a1b2c@{host}.tmp"]  # a live process, but untouched for hours
    kept = [folder / f".c.json.{alive}-0a1b2c@{host}.tmp",  # a live writer
            folder / f".d.json.{dead}-0a1b2c@other-host.tmp",  # another host's writer, recent
            folder / "x.tmp"]  # not ours
    for path in stale + kept:
        path.write_text("half")
    old = time.time() - STALE_SECONDS - 60
    os.utime(stale[2], (old, old))
    write_record(record, tmp_path)
    assert [p for p in stale if p.exists()] == [] and all(p.exists() for p in kept)
    os.utime(kept[1], (old, old))
    assert sweep_stale_temps(folder, force=True) == [kept[1]]


def _hash_files(paths: list[str], cache: str) -> None:
    from pretrained.checkpoints import sha256_file
    with cache_dir_override(Path(cache)):
        for path in paths:
            sha256_file(path)


def test_sha256_memo_is_shared_under_a_lock_and_follows_the_cache_dir(tmp_path):
    files = []
    for i in range(24):
        files.append(tmp_path / f"f{i}.bin")
        files[-1].write_bytes(os.urandom(64))
    cache = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_hash_files, args=([str(f) for f in files[k::2]], str(cache))) for k in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    memo = json.loads((cache / "sha256.json").read_text())
    assert len(memo) == 24  # no read-modify-write lost an entry
    (cache / "sha256.json").write_text("{trunc")  # a corrupt memo is rebuilt, not a crash
    _hash_files([str(files[0])], str(cache))
    assert len(json.loads((cache / "sha256.json").read_text())) == 1


def test_medmnist_md5_memo_survives_a_corrupt_file(tmp_path):
    from datasets.medmnist import file_md5
    from datasets.download import md5_of
    data = tmp_path / "x.npz"
    data.write_bytes(os.urandom(100))
    with cache_dir_override(tmp_path / "cache"):
        assert file_md5(data) == md5_of(data)
        (memo,) = (tmp_path / "cache" / "md5").glob("*.json")
        memo.write_text('{"path": "x", "md')  # as a kill mid-write left it before the writes were atomic
        assert file_md5(data) == md5_of(data)
        assert json.loads(memo.read_text())["md5"] == md5_of(data)
        assert not list(memo.parent.glob(".*.tmp"))


def test_recipe_encoders_live_under_the_cache_dir(tmp_path):
    from pretrained.ssl.recipes import MAIN_JOB_SSL, recipe_status
    with cache_dir_override(tmp_path):
        assert str(tmp_path / "pretrained" / MAIN_JOB_SSL) in recipe_status(MAIN_JOB_SSL).detail
