"""`fervid bench` runs on a tiny workload and its figures agree with each other and with the Parquet."""

from __future__ import annotations

import shutil

import pyarrow.dataset as ds

from pipeline.bench import print_table, run_bench


def test_bench_figures_are_consistent(shared, test_config, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(shared / "videos" / "single_face.mp4", videos)
    results = tmp_path / "results"
    result = run_bench(videos, test_config, repeat=2, results=results)
    stages, reference, fervid = result["stages_one_worker"], result["reference_loop"], result["fervid"]
    faces_in_parquet = ds.dataset(results / "faces", format="parquet", partitioning="hive").count_rows()
    assert fervid["videos_ok"] == 2  # the two copies have their own content ids
    assert stages["frames"] == reference["frames"] == fervid["frames"] == 24
    assert stages["faces"] == reference["faces"] == fervid["faces"] == faces_in_parquet == 24
    assert fervid["spilled_mib"] == 0 and fervid["workers_peak_rss_mib"] > 0
    assert 0 < fervid["ray_up_s"] <= fervid["probed_s"] <= fervid["first_result_s"] <= fervid["first_commit_s"] \
        <= fervid["wall_s"]  # Ray's start is on the clock, as in `fervid run`
    assert fervid["actor_start"]["imports_s"] > 0 and fervid["actor_start"]["constructor_s"] > 0
    assert 0 < fervid["first_result_frames"] <= fervid["frames"] and fervid["running_frames_per_s"] >= 0
    assert result["speedup_vs_reference"] > 0
    print_table(result)
    out = capsys.readouterr().out
    assert "fervid / sequential loop" in out and "sequential loop" in out
