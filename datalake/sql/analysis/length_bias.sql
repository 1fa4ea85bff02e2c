-- Does a longer answer score higher? Correlation of score and length per iteration and reward.
SELECT
    s.iteration,
    s.reward,
    count(*)                                   AS rollouts,
    round(corr(s.score, r.n_tokens), 4)         AS score_length_corr,
    round(avg(r.n_tokens), 1)                   AS mean_tokens,
    round(avg(s.score), 4)                      AS mean_score
FROM scores AS s
JOIN rollouts AS r USING (iteration, rollout_id)
WHERE s.status = 'ok'
GROUP BY s.iteration, s.reward
ORDER BY s.iteration, s.reward
