-- How much the proxy reward varies within a meta-question, per iteration: the signal selection feeds on.
WITH per_question AS (
    SELECT iteration, question_id, var_samp(score) AS variance, max(score) - min(score) AS gap, count(*) AS n
    FROM scores
    WHERE reward = 'proxy_accuracy' AND status = 'ok'
    GROUP BY iteration, question_id
)
SELECT
    iteration,
    count(*)                               AS questions,
    round(avg(variance), 5)                AS mean_variance,
    round(median(variance), 5)             AS median_variance,
    round(avg(gap), 4)                     AS mean_gap,
    count(*) FILTER (gap = 0)              AS questions_without_spread
FROM per_question
GROUP BY iteration
ORDER BY iteration
