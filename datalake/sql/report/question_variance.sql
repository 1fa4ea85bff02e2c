-- The report's variance histogram: per iteration and meta-question, the variance of its rollouts' proxy
-- accuracy, beside the selection's cut (the least variance among that iteration's pairs).
WITH per_question AS (
    SELECT iteration, question_id, var_samp(score) AS variance
    FROM scores
    WHERE reward = 'proxy_accuracy' AND status = 'ok'
    GROUP BY ALL
),
cuts AS (
    SELECT iteration, min(score_variance) AS selection_cut FROM pairs GROUP BY iteration
)
SELECT p.iteration, p.question_id, p.variance, c.selection_cut
FROM per_question AS p
LEFT JOIN cuts AS c USING (iteration)
ORDER BY p.iteration, p.question_id
