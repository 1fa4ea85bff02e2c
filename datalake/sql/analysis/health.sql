-- Is the loop degenerating? One row per evaluated iteration, with the signs `iterate` warns about:
-- the trained policy losing likelihood on its own chosen answers, answers running into the token limit,
-- eval precision falling (more guesses, not more facts), and, when an evaluation judge other than the training
-- judge scores the answers, the training judge liking them more and more than it does (pleasing its judge).
-- Edit the thresholds here.
WITH thresholds AS (
    SELECT
        -0.5 AS min_chosen_logp_change,   -- nats per answer token, trained policy vs its reference
        0.2  AS max_token_limit_share,    -- share of eval answers cut by the token limit ...
        0.1  AS max_token_limit_rise,     -- ... and its rise over iteration 0
        0.03 AS max_precision_drop,       -- eval proxy precision below the previous iteration's
        0.05 AS max_judge_gap_rise        -- training minus evaluation judge accuracy, above iteration 0's
),
eval_stats AS (
    SELECT iteration,
           avg(score) FILTER (reward = 'proxy_accuracy')  AS eval_accuracy,
           avg(score) FILTER (reward = 'proxy_precision') AS eval_precision,
           avg(score) FILTER (reward = 'training_judge_proxy_accuracy')
               - avg(score) FILTER (reward = 'proxy_accuracy') AS judge_gap
    FROM evaluations GROUP BY iteration
),
limits AS (
    SELECT iteration, avg(CAST(finish_reason = 'length' AS DOUBLE)) AS token_limit_share, avg(n_tokens) AS mean_tokens
    FROM eval_rollouts WHERE sample_index >= 0 GROUP BY iteration   -- greedy extras (index -1) aside
),
trained AS (                -- the latest finished train run of each iteration
    SELECT iteration,
           CAST(json_extract(metrics, '$.trend.chosen_logp_change_per_token') AS DOUBLE)   AS chosen_logp_change,
           CAST(json_extract(metrics, '$.trend.rejected_logp_change_per_token') AS DOUBLE) AS rejected_logp_change
    FROM runs WHERE stage = 'train' AND status = 'finished'
    QUALIFY row_number() OVER (PARTITION BY iteration ORDER BY finished_at DESC) = 1
),
joined AS (
    SELECT e.iteration, e.eval_accuracy, e.eval_precision,
           e.eval_precision - lag(e.eval_precision) OVER (ORDER BY e.iteration) AS precision_change,
           e.judge_gap, e.judge_gap - first_value(e.judge_gap) OVER (ORDER BY e.iteration) AS judge_gap_rise,
           l.mean_tokens, l.token_limit_share,
           l.token_limit_share - first_value(l.token_limit_share) OVER (ORDER BY e.iteration) AS token_limit_rise,
           t.chosen_logp_change, t.rejected_logp_change
    FROM eval_stats AS e
    LEFT JOIN limits AS l USING (iteration)
    LEFT JOIN trained AS t USING (iteration)
)
SELECT
    j.iteration,
    round(j.eval_accuracy, 4)        AS eval_accuracy,
    round(j.eval_precision, 4)       AS eval_precision,
    round(j.precision_change, 4)     AS precision_change,
    round(j.judge_gap, 4)            AS judge_gap,
    round(j.mean_tokens, 1)          AS eval_tokens,
    round(j.token_limit_share, 3)    AS token_limit_share,
    round(j.chosen_logp_change, 4)   AS chosen_logp_change,
    round(j.rejected_logp_change, 4) AS rejected_logp_change,
    concat_ws('; ',
        CASE WHEN j.chosen_logp_change < t.min_chosen_logp_change
             THEN 'chosen likelihood collapsing (' || round(j.chosen_logp_change, 2) || ' nats/token)' END,
        CASE WHEN j.token_limit_share > t.max_token_limit_share AND j.token_limit_rise > t.max_token_limit_rise
             THEN 'answers hitting the token limit (' || CAST(round(100 * j.token_limit_share) AS INTEGER) || '%)' END,
        CASE WHEN j.precision_change < -t.max_precision_drop
             THEN 'precision dropping (' || round(j.precision_change, 3) || ')' END,
        CASE WHEN j.judge_gap_rise > t.max_judge_gap_rise
             THEN 'training judge pleased (+' || round(j.judge_gap_rise, 3) || ' over the evaluation judge)' END
    ) AS flags
FROM joined AS j CROSS JOIN thresholds AS t
ORDER BY j.iteration
