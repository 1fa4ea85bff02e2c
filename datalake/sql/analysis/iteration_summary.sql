-- One row per iteration: rollouts, mean proxy score, pairs, final train loss, eval accuracy and precision (by the
-- evaluation judge), and the training judge's accuracy of the same answers when the evaluation judge is another.
WITH iterations AS (
    SELECT DISTINCT iteration FROM runs
),
rollout_stats AS (
    SELECT iteration, count(*) AS rollouts, avg(n_tokens) AS mean_tokens FROM rollouts GROUP BY iteration
),
score_stats AS (
    SELECT iteration, avg(score) AS mean_proxy_accuracy, count(*) FILTER (status = 'failed') AS failed_scores
    FROM scores WHERE reward = 'proxy_accuracy' GROUP BY iteration
),
pair_stats AS (
    SELECT iteration, count(*) AS pairs, avg(chosen_score - rejected_score) AS mean_margin
    FROM pairs GROUP BY iteration
),
train_stats AS (            -- the latest finished train run of each iteration
    SELECT iteration,
           CAST(json_extract(metrics, '$.metrics.loss') AS DOUBLE) AS train_loss,
           CAST(json_extract(metrics, '$.metrics."rewards/accuracies"') AS DOUBLE) AS train_reward_accuracy
    FROM runs WHERE stage = 'train' AND status = 'finished'
    QUALIFY row_number() OVER (PARTITION BY iteration ORDER BY finished_at DESC) = 1
),
eval_stats AS (
    SELECT iteration,
           avg(score) FILTER (reward = 'proxy_accuracy')  AS eval_accuracy,
           avg(score) FILTER (reward = 'proxy_precision') AS eval_precision,
           avg(score) FILTER (reward = 'training_judge_proxy_accuracy') AS training_judge_accuracy
    FROM evaluations GROUP BY iteration
),
eval_lengths AS (
    SELECT iteration, avg(n_tokens) AS eval_mean_tokens FROM eval_rollouts WHERE sample_index >= 0 GROUP BY iteration
)
SELECT
    i.iteration,
    r.rollouts,
    round(s.mean_proxy_accuracy, 4) AS mean_score,
    s.failed_scores,
    p.pairs,
    round(p.mean_margin, 4)         AS pair_margin,
    round(t.train_loss, 4)          AS train_loss,
    round(e.eval_accuracy, 4)       AS eval_accuracy,
    round(e.eval_precision, 4)      AS eval_precision,
    round(e.training_judge_accuracy, 4) AS training_judge_accuracy,
    round(l.eval_mean_tokens, 1)    AS eval_tokens
FROM iterations AS i
LEFT JOIN rollout_stats AS r USING (iteration)
LEFT JOIN score_stats AS s USING (iteration)
LEFT JOIN pair_stats AS p USING (iteration)
LEFT JOIN train_stats AS t USING (iteration)
LEFT JOIN eval_stats AS e USING (iteration)
LEFT JOIN eval_lengths AS l USING (iteration)
ORDER BY i.iteration
