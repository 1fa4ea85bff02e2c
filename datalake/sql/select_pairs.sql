-- DPO pairs of one iteration, chosen by reward variance (ProxyReward's selection).
-- Parameters: $iteration, $reward, $min_gap, $top_fraction, $top_k (NULL: use the fraction),
-- $conflict_reward (NULL: no conflict filter), $max_length_ratio (NULL: no length guard).
-- Each question's pair is its best and worst answer (ties broken by the conflict reward, then by sample
-- index); the filters drop the pairs they reject; the top fraction by variance is taken among the rest, so a
-- filtered question leaves its place to the next one.
WITH scored AS (            -- the iteration's usable scores of the chosen reward, with the conflict reward's
    SELECT s.question_id, s.rollout_id, s.score, c.score AS second, r.sample_index, r.n_tokens
    FROM scores AS s
    JOIN rollouts AS r USING (iteration, rollout_id)
    LEFT JOIN scores AS c
        ON c.iteration = s.iteration AND c.rollout_id = s.rollout_id AND c.reward = $conflict_reward
       AND c.status = 'ok'
    WHERE s.iteration = $iteration AND s.reward = $reward AND s.status = 'ok'
),
per_question AS (           -- spread of the scores per meta-question
    SELECT
        question_id,
        count(*)                  AS n,
        avg(score)                AS mean_score,
        var_samp(score)           AS score_variance,
        max(score) - min(score)   AS score_gap
    FROM scored
    GROUP BY question_id
),
eligible AS (               -- at least two answers that differ by at least min_gap (and at all)
    SELECT * FROM per_question
    WHERE n >= 2 AND score_gap >= $min_gap AND score_gap > 0
),
best AS (                   -- chosen: the highest score; ties to the highest second reward, then the lowest index
    SELECT * FROM scored
    QUALIFY row_number() OVER (PARTITION BY question_id
                               ORDER BY score DESC, second DESC NULLS LAST, sample_index) = 1
),
worst AS (                  -- rejected: the lowest score; ties to the lowest second reward, then the highest index
    SELECT * FROM scored
    QUALIFY row_number() OVER (PARTITION BY question_id
                               ORDER BY score ASC, second ASC NULLS LAST, sample_index DESC) = 1
),
candidates AS (             -- every eligible question's pair
    SELECT
        q.question_id,
        q.score_variance,
        b.rollout_id AS chosen_rollout_id,
        w.rollout_id AS rejected_rollout_id,
        b.score      AS chosen_score,
        w.score      AS rejected_score,
        b.second     AS chosen_second,
        w.second     AS rejected_second,
        b.n_tokens   AS chosen_tokens,
        w.n_tokens   AS rejected_tokens
    FROM eligible AS q
    JOIN best AS b USING (question_id)
    JOIN worst AS w USING (question_id)
),
kept AS (                   -- the filters: the conflict reward must not order the pair the other way; the length guard
    SELECT * FROM candidates
    WHERE ($conflict_reward IS NULL OR chosen_second IS NULL OR rejected_second IS NULL
           OR chosen_second >= rejected_second)
      AND ($max_length_ratio IS NULL OR chosen_tokens <= $max_length_ratio * greatest(rejected_tokens, 1))
),
ranked AS (                 -- highest variance first among the kept; ties by question id
    SELECT *,
           row_number() OVER (ORDER BY score_variance DESC, question_id) AS variance_rank,
           count(*) OVER ()                                              AS n_kept
    FROM kept
)
SELECT
    CAST($iteration AS BIGINT) AS iteration,
    question_id, chosen_rollout_id, rejected_rollout_id, chosen_score, rejected_score, score_variance
FROM ranked
WHERE variance_rank <= coalesce($top_k, ceil($top_fraction * n_kept))
ORDER BY question_id
