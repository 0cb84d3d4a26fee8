-- One row per face track: its person (identity on), when it was first and last seen, in how many sampled frames (how many of
-- them with a usable face), the emotion its mean probabilities over usable faces favour, and the mean
-- probability of each emotion over them.
CREATE VIEW tracks AS
SELECT
    video_id, track_id, any_value(person_id) AS person_id, any_value(person_name) AS person_name,
    min(pts_s) AS first_s, max(pts_s) AS last_s,
    count(*) AS frames,
    count(*) FILTER (WHERE usable) AS usable_frames,
    dominant([
        avg(p_{label}) FILTER (WHERE usable),
    ]) AS dominant_emotion,
    avg(p_{label}) FILTER (WHERE usable) AS mean_{label},
FROM faces
WHERE track_id IS NOT NULL
GROUP BY video_id, track_id
ORDER BY video_id, track_id;
