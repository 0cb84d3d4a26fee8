-- One row per person (identity on): their name where the gallery gave one, in how many videos and tracks
-- they appear, for how long (each sampled frame showing them stands for the time until the next sampled
-- frame), their faces and usable faces, and the emotions of their usable faces: the dominant one by mean
-- probability and the mean probability of each.
CREATE VIEW people AS
WITH on_screen AS (
    SELECT person_id, sum(span_s) AS on_screen_s
    FROM (SELECT DISTINCT person_id, video_id, frame_index FROM faces WHERE person_id IS NOT NULL)
    JOIN frame_spans USING (video_id, frame_index)
    GROUP BY person_id
), stats AS (
    SELECT person_id, any_value(person_name) AS person_name,
        count(DISTINCT video_id) AS videos,
        count(DISTINCT (video_id, track_id)) AS tracks,
        count(*) AS faces,
        count(*) FILTER (WHERE usable) AS usable_faces,
        avg(p_{label}) FILTER (WHERE usable) AS mean_{label},
    FROM faces
    WHERE person_id IS NOT NULL
    GROUP BY person_id
)
SELECT person_id, person_name, videos, tracks, on_screen_s, faces, usable_faces,
    dominant([
        mean_{label},
    ]) AS dominant_emotion,
    mean_{label},
FROM stats JOIN on_screen USING (person_id)
ORDER BY person_id;
