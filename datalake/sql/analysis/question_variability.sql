-- The most and least variable meta-questions of each iteration under the proxy reward.
WITH per_question AS (
    SELECT s.iteration, s.question_id, q.domain, count(*) AS n,
           round(avg(s.score), 4) AS mean_score, round(var_samp(s.score), 5) AS variance,
           round(max(s.score) - min(s.score), 4) AS gap
    FROM scores AS s JOIN meta_questions AS q USING (question_id)
    WHERE s.reward = 'proxy_accuracy' AND s.status = 'ok'
    GROUP BY ALL
),
ranked AS (
    SELECT *,
           row_number() OVER (PARTITION BY iteration ORDER BY variance DESC, question_id) AS most,
           row_number() OVER (PARTITION BY iteration ORDER BY variance ASC, question_id)  AS least
    FROM per_question
)
SELECT iteration, CASE WHEN most <= 5 THEN 'most variable' ELSE 'least variable' END AS kind,
       question_id, domain, n, mean_score, variance, gap
FROM ranked
WHERE most <= 5 OR least <= 5
ORDER BY iteration, kind DESC, variance DESC
