-- Baseline for select_pairs.sql: questions picked at random (seeded), each pairing two of its answers picked at
-- random, the better-scored one as chosen; the conflict filter and the length guard drop pairs before the cut,
-- as there, so only the choice differs. Parameters as select_pairs.sql, + $seed.
WITH scored AS (
    SELECT s.question_id, s.rollout_id, s.score, c.score AS second, r.sample_index, r.n_tokens
    FROM scores AS s
    JOIN rollouts AS r USING (iteration, rollout_id)
    LEFT JOIN scores AS c
        ON c.iteration = s.iteration AND c.rollout_id = s.rollout_id AND c.reward = $conflict_reward
       AND c.status = 'ok'
    WHERE s.iteration = $iteration AND s.reward = $reward AND s.status = 'ok'
),
per_question AS (
    SELECT question_id, count(*) AS n, var_samp(score) AS score_variance, max(score) - min(score) AS score_gap
    FROM scored GROUP BY question_id
),
eligible AS (
    SELECT * FROM per_question WHERE n >= 2 AND score_gap >= $min_gap AND score_gap > 0
),
drawn AS (                  -- two random answers with different scores
    SELECT a.question_id, a.rollout_id AS a_id, a.score AS a_score, b.rollout_id AS b_id, b.score AS b_score,
           a.second AS a_second, b.second AS b_second, a.n_tokens AS a_tokens, b.n_tokens AS b_tokens
    FROM scored AS a JOIN scored AS b ON a.question_id = b.question_id AND a.score > b.score
    QUALIFY row_number() OVER (PARTITION BY a.question_id
                               ORDER BY hash(a.rollout_id || b.rollout_id || $seed::VARCHAR)) = 1
),
kept AS (                   -- the same filters as select_pairs.sql
    SELECT q.question_id, q.score_variance, d.*
    FROM eligible AS q JOIN drawn AS d USING (question_id)
    WHERE ($conflict_reward IS NULL OR d.a_second IS NULL OR d.b_second IS NULL OR d.a_second >= d.b_second)
      AND ($max_length_ratio IS NULL OR d.a_tokens <= $max_length_ratio * greatest(d.b_tokens, 1))
),
ranked AS (
    SELECT *, row_number() OVER (ORDER BY hash(question_id || $seed::VARCHAR)) AS random_rank,
           count(*) OVER () AS n_kept
    FROM kept
)
SELECT
    CAST($iteration AS BIGINT) AS iteration,
    question_id,
    a_id    AS chosen_rollout_id,
    b_id    AS rejected_rollout_id,
    a_score AS chosen_score,
    b_score AS rejected_score,
    score_variance
FROM ranked
WHERE random_rank <= coalesce($top_k, ceil($top_fraction * n_kept))
ORDER BY question_id
