-- What `fervid report` shows, as views and macros, so every number on its pages can be asked again here.

-- One row per video whose latest record is not a skip (ok or failed), with its summary: the report's index
-- and every page's header.
CREATE VIEW video_index AS
SELECT r.* EXCLUDE (duration_s, sampled_frames, faces),
    coalesce(s.duration_s, r.duration_s) AS duration_s,
    s.* EXCLUDE (video_id, path, duration_s),
    s.faces / nullif(s.sampled_frames, 0) AS faces_per_frame,
    coalesce(most.most_faces, 0) AS most_faces,
    coalesce(tracks.tracks, 0) AS tracks
FROM latest_records r
LEFT JOIN video_summary s USING (video_id)
LEFT JOIN (SELECT video_id, max(face_count) AS most_faces FROM frames GROUP BY video_id) most USING (video_id)
LEFT JOIN (SELECT video_id, count(DISTINCT track_id) AS tracks FROM faces GROUP BY video_id) tracks USING (video_id)
ORDER BY r.path;

-- Which videos each person appears in (identity on): the index's people table links to them.
CREATE VIEW person_videos AS
SELECT DISTINCT person_id, video_id, path
FROM faces JOIN videos USING (video_id)
WHERE person_id IS NOT NULL
ORDER BY person_id, path;

-- A video's emotion segments with the time each emotion holds over all its tracks, and that time's share.
CREATE MACRO video_segments(id) AS TABLE
SELECT *,
    sum(duration_s) OVER (PARTITION BY emotion) AS emotion_s,
    sum(duration_s) OVER (PARTITION BY emotion) / sum(duration_s) OVER () AS emotion_share
FROM emotion_segments
WHERE video_id = id
ORDER BY track_id, start_s;

-- A video's timeline in buckets of bucket_s seconds, each with its middle time t.
CREATE MACRO video_timeline(id, bucket_s) AS TABLE
SELECT *, (start_s + end_s) / 2 AS t
FROM timeline(bucket_s)
WHERE video_id = id
ORDER BY start_s, track_id;

-- A video's faces at the given times (its emotions' peaks, for the key-moment thumbnails).
CREATE MACRO faces_at(id, times) AS TABLE
SELECT * FROM faces WHERE video_id = id AND list_contains(times, pts_s);
