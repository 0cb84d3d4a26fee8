-- Base views over one RESULTS folder: only videos whose latest run is ok count.
--
-- Placeholders, filled in by pipeline/query.py (`fervid query RESULTS --print-views` prints the result):
--   {videos_files}, {frames_files}, {faces_files}  every committed Parquet file of that table (superseded
--       runs included; in-progress *.tmp files not), with video_id from the hive partition:
--       read_parquet('RESULTS/faces/*/*.parquet', hive_partitioning = true, ...) in plain SQL
--   {labels}   the model's labels as SQL strings, in the model's order
--   a line holding {label} is written once per label

-- Each video's latest record that was not a skip (a skip only says "already done"); the video is
-- visible when that record is ok, and then only through that run's files.
CREATE VIEW videos AS
SELECT * FROM (
    SELECT *
    FROM {videos_files}
    WHERE status <> 'skipped'
    QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY finished_at DESC, run_id DESC) = 1
)
WHERE status = 'ok';

-- video_id is the hive partition (faces/video_id=<id>/<run>.parquet): a filter on it opens only
-- that video's files. Files of superseded runs may linger; joining on run_id leaves them out.
CREATE VIEW frames AS
SELECT video_id, * EXCLUDE (video_id)
FROM {frames_files}
SEMI JOIN videos USING (video_id, run_id);

CREATE VIEW faces AS
SELECT video_id, * EXCLUDE (video_id)
FROM {faces_files}
SEMI JOIN videos USING (video_id, run_id);

-- The label with the highest value (a probability, a count) in a list ordered like the labels;
-- ties go to the first label, as in faces.emotion. NULL when all values are NULL (no face).
CREATE MACRO dominant(probs) AS
    CASE WHEN list_max(probs) IS NOT NULL THEN [{labels}][list_position(probs, list_max(probs))] END;
