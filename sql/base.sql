-- video_id is the hive partition (faces/video_id=<id>/<run>.parquet): a filter on it opens only
-- that video's files. Files of superseded runs may linger; joining on run_id leaves them out.
CREATE VIEW frames AS
SELECT video_id, * EXCLUDE (video_id)
FROM {frames_files}
SEMI JOIN videos USING (video_id, run_id);

-- Every detected face. `usable` says whether it passed the quality.* thresholds; the summary views count
-- only usable faces. Results written before quality existed have no such column: their faces count as usable.
-- person_id and person_name: the person of the face's track, over the whole folder (identity on).
CREATE VIEW faces AS
SELECT f.video_id, f.* EXCLUDE (video_id) REPLACE (coalesce(f.usable, true) AS usable), p.person_id, p.person_name
FROM {faces_files} f
SEMI JOIN videos USING (video_id, run_id)
LEFT JOIN {people_files} p ON p.video_id = f.video_id AND p.run_id = f.run_id AND p.track_id = f.track_id;

-- The label with the highest value (a probability, a count) in a list ordered like the labels;
-- ties go to the first label, as in faces.emotion. NULL when all values are NULL (no face).
CREATE MACRO dominant(probs) AS
    CASE WHEN list_max(probs) IS NOT NULL THEN [{labels}][list_position(probs, list_max(probs))] END;

-- Each sampled frame's span: it stands for the time until the next sampled frame (the last one: until the
-- video ends).
CREATE VIEW frame_spans AS
SELECT video_id, frame_index,
    coalesce(lead(pts_s) OVER w, greatest(duration_s, pts_s)) - pts_s AS span_s
FROM frames JOIN videos USING (video_id)
WINDOW w AS (PARTITION BY video_id ORDER BY pts_s);
