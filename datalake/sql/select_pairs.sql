-- DPO pairs of one iteration, chosen by reward variance (ProxyReward's selection).
-- Parameters: $iteration, $reward, $min_gap, $top_fraction, $top_k (NULL: use the fraction),
-- $conflict_reward (NULL: no conflict filter), $max_length_ratio (NULL: no length guard).
WITH scored AS (            -- the iteration's usable scores of the chosen reward, with answer lengths
    SELECT s.question_id, s.rollout_id, s.score, r.sample_index, r.n_tokens
    FROM scores AS s
    JOIN rollouts AS r USING (iteration, rollout_id)
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
ranked AS (                 -- highest variance first; ties by question id
    SELECT *,
           row_number() OVER (ORDER BY score_variance DESC, question_id) AS variance_rank,
           count(*) OVER ()                                              AS n_eligible
    FROM eligible
),
selected AS (
    SELECT * FROM ranked
    WHERE variance_rank <= coalesce($top_k, ceil($top_fraction * n_eligible))
),
best AS (                   -- chosen: the highest score; ties to the lowest sample index
    SELECT * FROM scored
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY score DESC, sample_index) = 1
),
worst AS (                  -- rejected: the lowest score; ties to the highest sample index
    SELECT * FROM scored
    QUALIFY row_number() OVER (PARTITION BY question_id ORDER BY score ASC, sample_index DESC) = 1
),
second_opinion AS (         -- the conflict filter's reward, when asked for
    SELECT rollout_id, score FROM scores
    WHERE iteration = $iteration AND reward = $conflict_reward AND status = 'ok'
),
pairs AS (
    SELECT
        CAST($iteration AS BIGINT) AS iteration,
        q.question_id,
        b.rollout_id               AS chosen_rollout_id,
        w.rollout_id               AS rejected_rollout_id,
        b.score                    AS chosen_score,
        w.score                    AS rejected_score,
        q.score_variance,
        b.n_tokens                 AS chosen_tokens,
        w.n_tokens                 AS rejected_tokens,
        sb.score                   AS chosen_second,
        sw.score                   AS rejected_second
    FROM selected AS q
    JOIN best AS b USING (question_id)
    JOIN worst AS w USING (question_id)
    LEFT JOIN second_opinion AS sb ON sb.rollout_id = b.rollout_id
    LEFT JOIN second_opinion AS sw ON sw.rollout_id = w.rollout_id
)
SELECT iteration, question_id, chosen_rollout_id, rejected_rollout_id, chosen_score, rejected_score, score_variance
FROM pairs
WHERE ($conflict_reward IS NULL OR chosen_second IS NULL OR rejected_second IS NULL
       OR chosen_second >= rejected_second)
  AND ($max_length_ratio IS NULL OR chosen_tokens <= $max_length_ratio * greatest(rejected_tokens, 1))
ORDER BY question_id
