"""Stage-level tests without Ray: config, sampling, segments, discovery, crops, decoding, rotation."""

from __future__ import annotations

import io
import os
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline.config import Config, InputsConfig, load_config
from pipeline.crop import square_crops
from pipeline.decode import probe, read_frames, sample_indices
from pipeline.errors import FervidError, first_line, shorten
from pipeline.plan import decode_size, discover, plan_segments
from pipeline.progress import Progress, StatusLine
from pipeline.schema import Segment
from tests.conftest import ROOT, TEST_CONFIG
from tests.media import write_video


def test_default_yaml_matches_built_in_defaults():
    assert load_config(ROOT / "configs" / "default.yaml").to_dict() == Config().to_dict()


@pytest.mark.parametrize("yaml_text, message", [
    ("sampling: {fsp: 5}", "unknown config key 'sampling.fsp'"),
    ("detector: {threshold: high}", "detector.threshold"),
    ("detector: {det_size: 650}", "multiple of 32"),
    ("detector: {det_size: small}", "auto or a positive multiple of 32"),
    ("sampling: {fps: 5, every_n_frames: 3}", "both set in the config file"),
        ("sampling: {fps: null}", "exactly one of"),
    ("classifier: {dtype: int4}", "classifier.dtype"),
    ("classifier: {quantize: int4}", "classifier.quantize must be null or int8"),
    ("classifier: {quantize: int8, device: cuda}", "runs on the CPU only"),
    ("classifier: {actors: 0, num_gpus: 1}", "inside the decode\\+detect actors"),
    ("classifier: {runtime: tensorrt}", "classifier.runtime must be auto, onnxruntime or torch"),
    ("classifier: {runtime: onnxruntime, dtype: bfloat16}", "runs fp32 on the CPU only"),
    ("nonsense: 1", "unknown config key 'nonsense'"),
])
def test_bad_config_is_one_clear_error(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(FervidError, match=message):
        load_config(path)


def test_overrides_and_relative_model_paths(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"detector": {"model": "./det.onnx"}}))
    config = load_config(path, ["sampling.fps=2", "classifier.batch_size=8", "sampling.segment_s=3"])
    assert config.sampling.fps == 2.0 and config.classifier.batch_size == 8 and config.sampling.segment_s == 3.0
    assert config.detector.model == str(tmp_path / "det.onnx")
    with pytest.raises(FervidError, match="unknown config key 'sampling.rate'"):
        load_config(None, ["sampling.rate=2"])
    with pytest.raises(FervidError, match="key=value"):
        load_config(None, ["sampling.fps"])


def test_fingerprint_follows_results_not_resources(shared, test_config):
    from dataclasses import replace

    base = test_config.fingerprint()
    resources = replace(test_config, classifier=replace(test_config.classifier, actors=3, batch_size=7))
    assert resources.fingerprint() == base
    assert replace(test_config, sampling=replace(test_config.sampling, fps=2.0)).fingerprint() != base
    assert replace(test_config, crop=replace(test_config.crop, margin=0.3)).fingerprint() != base
    assert replace(test_config, classifier=replace(test_config.classifier, runtime="torch")).fingerprint() != base


def test_sampling_by_time_handles_variable_rate_and_negative_start():
    steady = np.arange(300) / 30.0  # 10 s at 30 fps
    assert len(sample_indices(steady, fps=5)) == 50
    assert np.allclose(np.diff(steady[sample_indices(steady, fps=5)]), 0.2)
    shifted = steady - 0.125  # negative start, as in ../shared/videos/no_face.mp4
    assert np.array_equal(sample_indices(shifted, fps=5), sample_indices(steady, fps=5))
    variable = np.concatenate([np.arange(0, 2, 1 / 60), 2 + np.arange(0, 2, 1 / 15)])  # 60 fps then 15 fps
    picked = variable[sample_indices(variable, fps=5)]
    assert len(picked) == 20 and np.all(np.diff(picked) > 0.15)
    assert np.array_equal(sample_indices(steady, every_n_frames=7), np.arange(0, 300, 7))


def test_segments_cover_the_sampled_frames_once():
    from pipeline.config import SamplingConfig
    from pipeline.decode import VideoInfo

    pts = np.arange(0, 25, 1 / 25)
    info = VideoInfo("decord", len(pts), 25.0, 25.0, 640, 360, 0, pts)
    segments = plan_segments("vid", "/x.mp4", info, SamplingConfig(fps=5, segment_s=10))
    assert [s.segment_index for s in segments] == [0, 1, 2]
    frames = [i for s in segments for i in s.frame_index]
    assert frames == sorted(set(frames)) and len(frames) == 125
    assert max(segments[0].pts_s) < 10 <= min(segments[1].pts_s)
    assert all(Segment.from_row(s.to_row()) == s for s in segments)  # as the executor hands it to a stage


def test_discover_is_recursive_case_blind_and_survives_link_loops(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.MP4", "a/b/two.mov", "a/b/notes.doc", "three.webm", "four.FLV", "five.m2ts", "cover.jpg"):
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    found = discover(tmp_path, InputsConfig())
    assert sorted(v.path.relative_to(tmp_path).as_posix() for v in found.videos) == [
        "a/b/two.mov", "a/one.MP4", "five.m2ts", "four.FLV", "three.webm"]
    assert found.not_taken == {".doc": 1, ".jpg": 1}
    assert found.untaken_line() == "2 files not taken (.doc 1, .jpg 1; inputs.extensions lists what is)"
    with pytest.raises(FervidError, match=r"no videos \(.*\.wmv\) found under .*notes.doc \(1 files not taken"):
        discover(tmp_path / "a" / "b" / "notes.doc", InputsConfig())
    with pytest.raises(FervidError, match="not found"):
        discover(tmp_path / "missing", InputsConfig())


def test_inputs_extensions_include_and_exclude_narrow_what_is_taken(tmp_path):
    for name in ("s1/intro.mp4", "s1/talk.mp4", "s2/talk.mp4", "s2/talk.flv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")

    def taken(**inputs) -> list[str]:
        return sorted(v.path.relative_to(tmp_path).as_posix() for v in discover(tmp_path, InputsConfig(**inputs)).videos)

    assert taken(extensions=[".flv"]) == ["s2/talk.flv"]
    assert taken(include=["*talk*"], exclude=["s2/*.flv"]) == ["s1/talk.mp4", "s2/talk.mp4"]
    found = discover(tmp_path, InputsConfig(include=["s1/*"]))
    assert found.excluded == 2 and "2 videos left out by --include/--exclude" in found.untaken_line()
    with pytest.raises(FervidError, match="inputs.extensions must be file endings"):
        load_config(None, ["inputs.extensions=[mp4]"])


def test_a_list_file_names_videos_folders_and_bad_lines(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("clips/a.mp4", "clips/b.MOV", "odd.bin"):
        (tmp_path / name).write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# interviews\nclips\n\n{tmp_path / 'odd.bin'}\nmissing.mp4\n")
    found = discover(listing, InputsConfig())
    # a folder is searched, a file named on its own is taken whatever its ending, a bad line is reported
    assert [Path(v.path).name for v in found.videos] == ["a.mp4", "b.MOV", "odd.bin"]
    assert found.bad_entries == [("missing.mp4", f"not found: {tmp_path / 'missing.mp4'}")]
    table = tmp_path / "list.csv"
    table.write_text("participant,path\np1,clips/a.mp4\np2,clips/b.MOV\n")
    assert [Path(v.path).name for v in discover(table, InputsConfig()).videos] == ["a.mp4", "b.MOV"]
    table.write_text("participant,file\np1,clips/a.mp4\n")
    with pytest.raises(FervidError, match="has no `path` column"):
        discover(table, InputsConfig())


def test_one_sampling_key_set_by_the_user_wins_over_the_others_default(tmp_path):
    assert (load_config(None, ["sampling.every_n_frames=24"]).sampling.fps, 24) == (None, 24)
    chosen = load_config(TEST_CONFIG, ["sampling.every_n_frames=24"]).sampling  # the file sets fps: a default here
    assert (chosen.fps, chosen.every_n_frames) == (None, 24)
    config = tmp_path / "c.yaml"
    config.write_text("sampling:\n  every_n_frames: 10\n")
    assert load_config(config).sampling.fps is None
    assert load_config(config, ["sampling.fps=2"]).sampling.every_n_frames is None
    with pytest.raises(FervidError, match="both set with --set"):
        load_config(None, ["sampling.fps=2", "sampling.every_n_frames=24"])
    config.write_text("sampling:\n  every_n_frames: 10\n  fps: 2\n")
    with pytest.raises(FervidError, match="both set in the config file"):
        load_config(config)


def test_errors_are_cut_at_a_word_never_inside_one():
    assert shorten("please check your connection and try again", 30) == "please check your connection…"
    assert first_line(RuntimeError("short\nsecond line")) == "short"
    assert len(shorten("x" * 500, 100)) == 100


def test_square_crops_pad_at_frame_edges():
    frame = np.full((100, 200, 3), 255, dtype=np.uint8)
    inside, corner = square_crops(frame, np.array([[50, 20, 90, 60], [-10, -10, 30, 30]], np.float32), 0.0, 40)
    assert inside.shape == (40, 40, 3) and inside.min() == 255
    assert corner[:5, :5].max() == 0 and corner[-5:, -5:].min() == 255  # black outside the frame


def test_decoded_timestamps_and_frames_match_pyav(shared):
    import av

    path = str(shared / "videos" / "single_face.mp4")
    info = probe(path)
    assert (info.decoder, info.frame_count, info.width, info.height) == ("decord", 72, 640, 360)
    assert info.duration_s == pytest.approx(2.4, abs=1e-3)
    with av.open(path) as container:
        reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    picked = [0, 6, 30, 71]
    for index, frame in read_frames(path, "decord", picked):
        assert np.abs(frame.astype(int) - reference[index]).mean() < 1.0
    for index, frame in read_frames(path, "pyav", picked):
        assert np.array_equal(frame, reference[index])


def test_decord_reader_is_closed_before_a_segments_frames_are_used(shared, monkeypatch):
    """decord's reader decodes ahead in a thread of its own while open, so frames that fit in HELD_BYTES
    come after it is closed; larger ones come while it is still open, at most HELD_BYTES at a time."""
    from pipeline import decode

    path = str(shared / "videos" / "WolfgangLanger_Pexels.mp4")
    picked = list(range(0, 240, 5))  # a 10 s segment at 5 fps: 48 frames, more than one decord chunk
    before = set(os.listdir("/proc/self/task"))
    frames = read_frames(path, "decord", picked, size=(640, 360))
    next(frames)
    assert set(os.listdir("/proc/self/task")) <= before  # the reader's threads are gone
    assert [i for i, _ in frames] == picked[1:]
    monkeypatch.setattr(decode, "HELD_BYTES", 1)
    frames = read_frames(path, "decord", picked, size=(640, 360))
    next(frames)
    assert set(os.listdir("/proc/self/task")) - before  # proof that the check above can fail
    assert [i for i, _ in frames] == picked[1:]


def test_pyav_finds_a_segments_frames_by_their_probed_times(shared, tmp_path):
    source = (shared / "videos" / "WolfgangLanger_Pexels.mp4").read_bytes()
    cut = tmp_path / "cut_off.mp4"
    cut.write_bytes(source[: len(source) // 2])  # decord cannot open it; PyAV reads the first half
    info = probe(str(cut))
    assert info.decoder == "pyav"
    picked = list(range(3, info.frame_count, 25))
    numbered = list(read_frames(str(cut), "pyav", picked))  # every packet demuxed to number the frames
    timed = list(read_frames(str(cut), "pyav", picked, pts_s=info.pts_s[picked].tolist()))
    assert [i for i, _ in timed] == [i for i, _ in numbered] == picked
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(timed, numbered))


def test_rotation_metadata_gives_upright_frames(shared, tmp_path):
    source = str(shared / "videos" / "single_face.mp4")
    frames = [f for _, f in read_frames(source, "decord", range(0, 20, 2))]
    path = write_video(tmp_path / "phone.mp4", frames, fps=5, rotation=-90)  # displayed turned clockwise
    info = probe(str(path))
    assert (info.rotation, info.width, info.height) == (90, 360, 640)
    for decoder in ("decord", "pyav"):
        _, upright = next(read_frames(str(path), decoder, [0], info.rotation))
        assert upright.shape == (640, 360, 3)
        assert np.abs(upright.astype(int) - np.rot90(frames[0], -1)).mean() < 6
        size = decode_size(info.width, info.height, 320)
        _, small = next(read_frames(str(path), decoder, [0], info.rotation, size))
        assert small.shape == (320, 180, 3)  # scaled while decoding, still upright
        expected = cv2.resize(np.rot90(frames[0], -1), (180, 320), interpolation=cv2.INTER_AREA)
        assert np.abs(small.astype(int) - expected).mean() < 8


@pytest.mark.parametrize("content", [b"", b"this is not a video\n" * 50])
def test_probe_rejects_non_videos(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(FervidError):
        probe(str(path))


def test_probe_rejects_audio_only(tmp_path):
    import av

    path = tmp_path / "voice.m4a.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(FervidError, match="no video stream"):
        probe(str(path))



def test_faces_under_min_face_px_are_counted_not_classified(shared):
    from pipeline.config import CropConfig, DetectorConfig, SamplingConfig
    from pipeline.stages import FACE, DecodeDetectCrop

    path = str(shared / "videos" / "single_face.mp4")
    segment = plan_segments("v", path, probe(path), SamplingConfig(segment_s=100.0))[0]
    model = str(shared / "models" / "scrfd_500m_bnkps.onnx")
    for min_face_px, faces, small in ((0, 1, 0), (10_000, 0, 1)):
        stage = DecodeDetectCrop(DetectorConfig(min_face_px=min_face_px), model, CropConfig(), crop_size=48)
        rows = stage.segment_rows(segment)
        closing = rows[-1]
        assert sum(row["kind"] == FACE for row in rows) == 12 * faces
        assert closing["frames_face_count"] == [faces] * 12 and closing["frames_small_faces"] == [small] * 12


def test_scaled_decoding_keeps_boxes_in_source_pixels(shared, tmp_path):
    from pipeline.config import CropConfig, DetectorConfig, SamplingConfig
    from pipeline.stages import DecodeDetectCrop

    frames = [f for _, f in read_frames(str(shared / "videos" / "single_face.mp4"), "decord", range(0, 72, 6))]
    path = str(write_video(tmp_path / "hd.mp4", (cv2.resize(f, (1280, 720)) for f in frames), fps=5))
    # one detector size for both: what is compared is the scaling back to source pixels
    stage = DecodeDetectCrop(DetectorConfig(det_size=640), str(shared / "models" / "scrfd_500m_bnkps.onnx"),
                             CropConfig(), crop_size=48)
    boxes = {}
    for max_side in (None, 640):
        segment = plan_segments("v", path, probe(path), SamplingConfig(segment_s=100.0, decode_max_side=max_side))[0]
        assert segment.decode_size == (None if max_side is None else (640, 360))
        boxes[max_side] = np.array([[r[k] for k in ("x1", "y1", "x2", "y2")] for r in stage.segment_rows(segment)[:-1]])
    assert boxes[None].shape == boxes[640].shape == (12, 4)
    assert np.abs(boxes[640] - boxes[None]).max() < 6  # pixels of the 1280x720 source


def test_progress_counts_its_rate_from_the_first_results_and_ends_done(monkeypatch):
    # start-up, the first results, too soon after them for a rate, then two more (Progress and StatusLine both ask)
    clock = iter([100.0] + [t for t in (110.0, 111.0, 114.0, 115.0) for _ in range(2)])
    monkeypatch.setattr("pipeline.progress.time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    log = io.StringIO()
    progress = Progress(StatusLine(log, every_s=0), videos=2, frames=100)
    progress.update(frames=20, faces=5)
    progress.update(frames=10)
    progress.update(videos=1, frames=30)
    progress.update(videos=1, frames=40, faces=3)
    lines = log.getvalue().splitlines()
    assert lines[0] == "videos 0/2  frames 20/100  faces 5  - frames/s  ETA ?"
    assert lines[1] == "videos 0/2  frames 30/100  faces 5  - frames/s  ETA ?"  # 1 s after the first results
    assert lines[2] == "videos 1/2  frames 60/100  faces 5  10.0 frames/s  ETA 4s"  # 40 frames in the 4 s since them
    assert lines[3] == "videos 2/2  frames 100/100  faces 8  16.0 frames/s  done"
