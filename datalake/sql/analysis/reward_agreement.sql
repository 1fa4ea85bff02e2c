-- Do two rewards agree? Per iteration and pair of rewards: correlation, and the share of answer pairs of one
-- question that both order the same way.
WITH wide AS (
    SELECT iteration, rollout_id, question_id, reward, score FROM scores WHERE status = 'ok'
),
reward_pairs AS (
    SELECT a.iteration, a.reward AS reward_a, b.reward AS reward_b, a.question_id,
           a.rollout_id, a.score AS score_a, b.score AS score_b
    FROM wide AS a JOIN wide AS b
      ON a.iteration = b.iteration AND a.rollout_id = b.rollout_id AND a.reward < b.reward
),
orderings AS (
    SELECT x.iteration, x.reward_a, x.reward_b,
           sign(x.score_a - y.score_a) = sign(x.score_b - y.score_b) AS same_order
    FROM reward_pairs AS x JOIN reward_pairs AS y
      ON x.iteration = y.iteration AND x.reward_a = y.reward_a AND x.reward_b = y.reward_b
     AND x.question_id = y.question_id AND x.rollout_id < y.rollout_id
    WHERE x.score_a != y.score_a AND x.score_b != y.score_b
)
SELECT
    p.iteration, p.reward_a, p.reward_b,
    count(*)                         AS rollouts,
    round(corr(p.score_a, p.score_b), 4) AS correlation,
    (SELECT round(avg(CAST(o.same_order AS DOUBLE)), 4) FROM orderings AS o
      WHERE o.iteration = p.iteration AND o.reward_a = p.reward_a AND o.reward_b = p.reward_b) AS pairwise_agreement
FROM reward_pairs AS p
GROUP BY p.iteration, p.reward_a, p.reward_b
ORDER BY p.iteration, p.reward_a, p.reward_b
