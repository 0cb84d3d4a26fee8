-- Per video: how often one emotion follows another, between consecutive segments of the same face
-- track (a face absent in between does not break the pair).
CREATE VIEW transitions AS
WITH pairs AS (
    SELECT video_id,
        lag(emotion) OVER (PARTITION BY video_id, track_id ORDER BY start_s) AS from_emotion,
        emotion AS to_emotion
    FROM emotion_segments
)
SELECT video_id, from_emotion, to_emotion, count(*) AS transitions
FROM pairs
WHERE from_emotion <> to_emotion
GROUP BY video_id, from_emotion, to_emotion
ORDER BY video_id, transitions DESC, from_emotion, to_emotion;
