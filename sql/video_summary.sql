-- One row per video: how much of it shows a face, how many faces were usable (usable_share: the rest
-- were too small, turned away, blurred or doubtful), which emotion most usable faces show and their
-- share showing it (ties go to the label order), the mean probability of each emotion, and the moment
-- (pts_s) each emotion peaks with its probability there, all over usable faces. One pass over faces.
CREATE VIEW video_summary AS
WITH frame_counts AS (
    SELECT video_id, count(*) AS sampled_frames, count(*) FILTER (WHERE face_count > 0) AS frames_with_face
    FROM frames
    GROUP BY video_id
), face_stats AS (
    SELECT video_id, count(*) AS faces, count(*) FILTER (WHERE usable) AS usable_faces,
        count(*) FILTER (WHERE usable AND emotion = '{label}') AS n_{label},
        avg(p_{label}) FILTER (WHERE usable) AS mean_{label},
        arg_max(pts_s, p_{label}) FILTER (WHERE usable) AS peak_{label}_s,
        max(p_{label}) FILTER (WHERE usable) AS peak_{label},
    FROM faces
    GROUP BY video_id
)
SELECT
    video_id, path, duration_s,
    coalesce(frame_counts.sampled_frames, 0) AS sampled_frames,
    coalesce(frames_with_face, 0) AS frames_with_face,
    frames_with_face / nullif(frame_counts.sampled_frames, 0) AS face_share,
    coalesce(face_stats.faces, 0) AS faces,
    coalesce(usable_faces, 0) AS usable_faces,
    usable_faces / nullif(face_stats.faces, 0) AS usable_share,
    CASE WHEN usable_faces > 0 THEN dominant([
        n_{label},
    ]) END AS dominant_emotion,
    list_max([
        n_{label},
    ]) / nullif(usable_faces, 0) AS dominant_share,
    mean_{label},
    peak_{label}_s, peak_{label},
FROM videos
LEFT JOIN frame_counts USING (video_id)
LEFT JOIN face_stats USING (video_id)
ORDER BY path;
