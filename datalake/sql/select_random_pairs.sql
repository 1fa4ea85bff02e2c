-- Baseline for select_pairs.sql: the same number of questions picked at random (seeded), each pairing two
-- of its answers picked at random, the better-scored one as chosen; the conflict filter and the length guard
-- apply as there, so only the choice differs. Parameters as select_pairs.sql, + $seed.
WITH scored AS (
    SELECT s.question_id, s.rollout_id, s.score, r.sample_index, r.n_tokens
    FROM scores AS s
    JOIN rollouts AS r USING (iteration, rollout_id)
    WHERE s.iteration = $iteration AND s.reward = $reward AND s.status = 'ok'
),
per_question AS (
    SELECT question_id, count(*) AS n, var_samp(score) AS score_variance, max(score) - min(score) AS score_gap
    FROM scored GROUP BY question_id
),
eligible AS (
    SELECT *, row_number() OVER (ORDER BY hash(question_id || $seed::VARCHAR)) AS random_rank,
           count(*) OVER () AS n_eligible
    FROM per_question WHERE n >= 2 AND score_gap >= $min_gap AND score_gap > 0
),
selected AS (
    SELECT * FROM eligible WHERE random_rank <= coalesce($top_k, ceil($top_fraction * n_eligible))
),
drawn AS (                  -- two random answers with different scores
    SELECT a.question_id, a.rollout_id AS a_id, a.score AS a_score, b.rollout_id AS b_id, b.score AS b_score,
           a.n_tokens AS a_tokens, b.n_tokens AS b_tokens
    FROM scored AS a JOIN scored AS b ON a.question_id = b.question_id AND a.score > b.score
    QUALIFY row_number() OVER (PARTITION BY a.question_id
                               ORDER BY hash(a.rollout_id || b.rollout_id || $seed::VARCHAR)) = 1
),
second_opinion AS (
    SELECT rollout_id, score FROM scores
    WHERE iteration = $iteration AND reward = $conflict_reward AND status = 'ok'
)
SELECT
    CAST($iteration AS BIGINT) AS iteration,
    q.question_id,
    d.a_id    AS chosen_rollout_id,
    d.b_id    AS rejected_rollout_id,
    d.a_score AS chosen_score,
    d.b_score AS rejected_score,
    q.score_variance
FROM selected AS q JOIN drawn AS d USING (question_id)
LEFT JOIN second_opinion AS sa ON sa.rollout_id = d.a_id
LEFT JOIN second_opinion AS sb ON sb.rollout_id = d.b_id
WHERE ($conflict_reward IS NULL OR sa.score IS NULL OR sb.score IS NULL OR sa.score >= sb.score)
  AND ($max_length_ratio IS NULL OR d.a_tokens <= $max_length_ratio * greatest(d.b_tokens, 1))
ORDER BY question_id
