-- Which record of a video counts: its latest one that was not a skip (a skip only says "already done").
-- This is the one place of that rule: `fervid run` asks this view which videos are done, and every other
-- view and the report start from it.
--
-- Placeholders, filled in by pipeline/query.py (`fervid query RESULTS --print-views` prints the result):
--   {videos_files}, {frames_files}, {faces_files}  every committed Parquet file of that table (superseded
--       runs included; in-progress *.tmp files not), with video_id from the hive partition:
--       read_parquet('RESULTS/faces/*/*.parquet', hive_partitioning = true, ...) in plain SQL
--   {people_files}  the person of each track (RESULTS/people/people.parquet; no rows where there is none)
--   {meta_files}    the table `fervid meta` attached (RESULTS/meta/meta.parquet; video_id alone where none)
--   a line holding {meta} is written once per column of that table
--   {labels}   the model's labels as SQL strings, in the model's order
--   a line holding {label} is written once per label
CREATE VIEW latest_records AS
SELECT *
FROM {videos_files}
WHERE status <> 'skipped'
QUALIFY row_number() OVER (PARTITION BY video_id ORDER BY finished_at DESC, run_id DESC) = 1;

-- The videos that count: those whose latest record is ok, and then only through that run's files.
CREATE VIEW videos AS
SELECT * FROM latest_records WHERE status = 'ok';

-- Paths whose content was analysed under another path: a copy skipped in the same run, or a renamed or
-- copied file skipped in a later one. The report lists them, and commands that take a video accept them.
CREATE VIEW duplicates AS
SELECT DISTINCT r.path AS duplicate_path, v.video_id, v.path, v.status
FROM {videos_files} r
JOIN latest_records v USING (video_id)
WHERE r.status = 'skipped' AND r.path <> v.path
ORDER BY v.path, duplicate_path;
