-- timeline(bucket_s): per video, per face track, per time bucket of bucket_s seconds: the mean
-- probability of each emotion over the usable faces, the dominant one, faces seen, how many of them
-- were usable, and frames sampled.
-- Faces without a track (tracking off) share the NULL track. A bucket with sampled frames but no
-- face has one row with faces_seen = 0 and NULL probabilities; one whose faces were all unusable has
-- usable_faces = 0 and NULL probabilities.
CREATE MACRO timeline(bucket_s) AS TABLE
WITH sampled AS (
    SELECT video_id, floor(pts_s / bucket_s::DOUBLE)::BIGINT AS bucket, count(*) AS frames_sampled
    FROM frames
    GROUP BY video_id, bucket
), seen AS (
    SELECT video_id, track_id, floor(pts_s / bucket_s::DOUBLE)::BIGINT AS bucket, any_value(person_id) AS person_id,
        count(*) AS faces_seen,
        count(*) FILTER (WHERE usable) AS usable_faces,
        avg(p_{label}) FILTER (WHERE usable) AS p_{label},
    FROM faces
    GROUP BY video_id, track_id, bucket
)
SELECT
    video_id, track_id, person_id,
    bucket * bucket_s::DOUBLE AS start_s,
    (bucket + 1) * bucket_s::DOUBLE AS end_s,
    frames_sampled,
    coalesce(faces_seen, 0) AS faces_seen,
    coalesce(usable_faces, 0) AS usable_faces,
    dominant([
        p_{label},
    ]) AS emotion,
    p_{label},
FROM sampled LEFT JOIN seen USING (video_id, bucket)
ORDER BY video_id, start_s, track_id;

CREATE VIEW timeline AS SELECT * FROM timeline(1.0);
