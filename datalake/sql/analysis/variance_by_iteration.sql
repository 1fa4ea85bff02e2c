-- The paper's Table 5, per iteration and reward scored on the rollouts: its mean, its variance over all
-- rollouts, and how much it varies within a meta-question (the signal variance selection feeds on). Every
-- reward is in [0, 1] except `length` (tokens).
WITH per_question AS (
    SELECT iteration, reward, question_id, var_samp(score) AS variance, max(score) - min(score) AS gap
    FROM scores
    WHERE status = 'ok'
    GROUP BY ALL
),
per_reward AS (
    SELECT iteration, reward, count(*) AS rollouts, avg(score) AS mean, var_samp(score) AS variance
    FROM scores
    WHERE status = 'ok'
    GROUP BY ALL
),
spread AS (
    SELECT iteration, reward,
           count(*)                     AS questions,
           avg(variance)                AS mean_within,
           median(variance)             AS median_within,
           avg(gap)                     AS mean_gap,
           count(*) FILTER (gap = 0)    AS questions_without_spread
    FROM per_question
    GROUP BY ALL
)
SELECT
    r.iteration,
    r.reward,
    r.rollouts,
    round(r.mean, 4)              AS mean,
    round(r.variance, 5)          AS variance,
    s.questions,
    round(s.mean_within, 5)       AS mean_variance,
    round(s.median_within, 5)     AS median_variance,
    round(s.mean_gap, 4)          AS mean_gap,
    s.questions_without_spread
FROM per_reward AS r
JOIN spread AS s USING (iteration, reward)
ORDER BY r.iteration, r.reward
