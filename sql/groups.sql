-- Comparing groups of videos: by the folder each video was found in (relative to the VIDEOS argument; '.'
-- for the top), or by any column of the table `fervid meta` attached.

-- The attached table: video_id and the user's columns, as text.
CREATE VIEW video_meta AS SELECT * FROM {meta_files};

-- Each video's groups in long form: one row per video and grouping. group_by is 'folder' or a column of
-- video_meta, group_name the video's value there (videos without one are in no group of that column).
CREATE VIEW video_groups AS
SELECT video_id, 'folder' AS group_by, coalesce(folder, '.') AS group_name FROM videos
UNION ALL SELECT video_id, '{meta}', "{meta}" FROM video_meta WHERE "{meta}" IS NOT NULL AND video_id IN (SELECT video_id FROM videos)
;

-- One row per group: its videos, usable faces, face_seconds (each usable face stands for its sampled frame's
-- span), and per emotion the share of the group's usable faces showing it, with a 95% interval from 1,000
-- bootstrap resamples of the group's videos (drawn by a fixed hash, so every run gives the same interval).
-- A group of more than 2,000 videos gets the normal interval the bootstrap tends to instead (the share's
-- standard error over videos, as for a ratio of sums): resampling it would cost 1,000 rows per video.
CREATE VIEW group_summary AS
WITH per_video AS (
    SELECT g.group_by, g.group_name, g.video_id,
        count(f.video_id) AS faces,
        coalesce(sum(s.span_s), 0) AS face_s,
        count(f.video_id) FILTER (WHERE f.emotion = '{label}') AS n_{label},
    FROM video_groups g
    LEFT JOIN faces f ON f.video_id = g.video_id AND f.usable
    LEFT JOIN frame_spans s ON s.video_id = f.video_id AND s.frame_index = f.frame_index
    GROUP BY ALL
), numbered AS (
    SELECT *, row_number() OVER (PARTITION BY group_by, group_name ORDER BY video_id) - 1 AS k,
        count(*) OVER (PARTITION BY group_by, group_name) AS n
    FROM per_video
), draws AS (
    SELECT group_by, group_name, r, (hash(20261202, r, i, group_by, group_name) % n)::BIGINT AS k
    FROM (SELECT DISTINCT group_by, group_name, n, unnest(range(n)) AS i FROM numbered WHERE n <= 2000),
        range(1000) t(r)
), resampled AS (
    SELECT group_by, group_name, r,
        sum(n_{label}) / nullif(sum(faces), 0) AS share_{label},
    FROM draws JOIN numbered USING (group_by, group_name, k)
    GROUP BY group_by, group_name, r
), totals AS (
    SELECT group_by, group_name, count(*) AS n, sum(faces) AS faces,
        sum(n_{label}) / nullif(sum(faces), 0) AS share_{label},
    FROM per_video
    GROUP BY group_by, group_name
    HAVING count(*) > 2000
), spread AS (
    SELECT group_by, group_name,
        any_value(t.share_{label}) AS share_{label},
        sqrt(sum((p.n_{label} - t.share_{label} * p.faces) ^ 2) * any_value(t.n) / (any_value(t.n) - 1)) / nullif(any_value(t.faces), 0) AS se_{label},
    FROM per_video p JOIN totals t USING (group_by, group_name)
    GROUP BY group_by, group_name
), intervals AS (
    SELECT group_by, group_name,
        quantile_cont(share_{label}, 0.025) AS share_{label}_low, quantile_cont(share_{label}, 0.975) AS share_{label}_high,
    FROM resampled
    GROUP BY group_by, group_name
    UNION ALL
    SELECT group_by, group_name,
        greatest(share_{label} - 1.96 * se_{label}, 0), least(share_{label} + 1.96 * se_{label}, 1),
    FROM spread
)
SELECT group_by, group_name, count(*) AS videos, sum(faces)::BIGINT AS faces, sum(face_s) AS face_seconds,
    sum(n_{label}) / nullif(sum(faces), 0) AS share_{label},
    any_value(share_{label}_low) AS share_{label}_low, any_value(share_{label}_high) AS share_{label}_high,
FROM per_video JOIN intervals USING (group_by, group_name)
GROUP BY group_by, group_name
ORDER BY group_by, group_name;

-- group_timeline(bins): per group, the emotion shares over the position in each video (0-100% of its
-- duration, in `bins` equal bins): in each bin, each video's share of usable faces showing each emotion,
-- averaged over the group's videos with usable faces there. The reaction curve of ad and stimulus tests.
CREATE MACRO group_timeline(bins) AS TABLE
WITH placed AS (
    SELECT f.video_id, least(floor(f.pts_s / nullif(v.duration_s, 0) * bins), bins - 1)::INTEGER AS bin, f.emotion
    FROM faces f JOIN videos v USING (video_id)
    WHERE f.usable
), per_video AS (
    SELECT video_id, bin,
        count(*) FILTER (WHERE emotion = '{label}') / count(*) AS share_{label},
    FROM placed
    GROUP BY video_id, bin
)
SELECT group_by, group_name, bin, bin * 100.0 / bins AS start_pct, (bin + 1) * 100.0 / bins AS end_pct,
    count(*) AS videos,
    avg(share_{label}) AS share_{label},
FROM video_groups JOIN per_video USING (video_id)
GROUP BY group_by, group_name, bin
ORDER BY group_by, group_name, bin;

CREATE VIEW group_timeline AS SELECT * FROM group_timeline(20);
