"""The `tracks` view agrees with a direct computation from the faces Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as ds

from pipeline.query import connect


def test_tracks_view_matches_the_faces_table(analysed):
    faces = ds.dataset(analysed / "faces", format="parquet", partitioning="hive").to_table().to_pandas()
    labels = [c[2:] for c in faces.columns if c.startswith("p_")]
    tracks = connect(analysed).sql("SELECT * FROM tracks").df()
    tracked = faces.dropna(subset=["track_id"])
    assert len(tracks) == tracked.groupby(["video_id", "track_id"]).ngroups > 0
    for row in tracks.itertuples():
        mine = tracked[(tracked.video_id == row.video_id) & (tracked.track_id == row.track_id)]
        assert (row.frames, row.first_s, row.last_s) == (len(mine), mine.pts_s.min(), mine.pts_s.max())
        mine = mine[mine.usable]  # the emotions are read from usable faces only
        assert row.usable_frames == len(mine)
        means = np.array([mine[f"p_{label}"].mean() for label in labels])
        assert np.allclose([getattr(row, f"mean_{label}") for label in labels], means, atol=1e-6)
        assert row.dominant_emotion == labels[int(means.argmax())]
