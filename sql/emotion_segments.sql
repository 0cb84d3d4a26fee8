-- emotion_segments(smooth_s): runs of the same emotion per video and face track, after smoothing
-- each emotion's probability with a moving average centred on each frame over smooth_s seconds.
-- A sampled frame stands for the time until the next sampled frame (the last one: until the video
-- ends), so a track's segments cover exactly the time its face is present, without overlapping.
-- Only usable faces count: a segment ends where the emotion changes or the face is absent or unusable.
-- mean_confidence is the mean (unsmoothed) probability of the segment's emotion over its frames.
CREATE MACRO emotion_segments(smooth_s) AS TABLE
WITH spans AS (
    SELECT video_id, frame_index,
        row_number() OVER w AS frame_seq,
        pts_s AS start_s,
        coalesce(lead(pts_s) OVER w, greatest(duration_s, pts_s)) AS end_s
    FROM frames JOIN videos USING (video_id)
    WINDOW w AS (PARTITION BY video_id ORDER BY pts_s)
), track_frames AS (
    SELECT video_id, track_id, frame_index, any_value(person_id) AS person_id,
        avg(p_{label}) AS p_{label},
    FROM faces
    WHERE usable
    GROUP BY video_id, track_id, frame_index
), smoothed AS (
    SELECT video_id, track_id, person_id, frame_seq, start_s, end_s,
        [
            p_{label},
        ] AS probs,
        dominant([
            avg(p_{label}) OVER w,
        ]) AS emotion
    FROM track_frames JOIN spans USING (video_id, frame_index)
    WINDOW w AS (PARTITION BY video_id, track_id ORDER BY start_s
                 RANGE BETWEEN smooth_s / 2 PRECEDING AND smooth_s / 2 FOLLOWING)
), starts AS (
    SELECT *,
        coalesce(emotion <> lag(emotion) OVER w OR frame_seq <> lag(frame_seq) OVER w + 1, true) AS starts_run
    FROM smoothed
    WINDOW w AS (PARTITION BY video_id, track_id ORDER BY frame_seq)
), runs AS (
    SELECT *, sum(starts_run::INTEGER) OVER (PARTITION BY video_id, track_id ORDER BY frame_seq) AS run
    FROM starts
)
SELECT
    video_id, track_id, any_value(person_id) AS person_id, emotion,
    min(start_s) AS start_s,
    max(end_s) AS end_s,
    max(end_s) - min(start_s) AS duration_s,
    count(*) AS frames,
    avg(probs[list_position([{labels}], emotion)]) AS mean_confidence
FROM runs
GROUP BY video_id, track_id, run, emotion
ORDER BY video_id, track_id, start_s;

CREATE VIEW emotion_segments AS SELECT * FROM emotion_segments(1.0);
