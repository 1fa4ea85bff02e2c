-- The report's score distributions and length plot: every usably scored rollout's proxy accuracy and length.
SELECT s.iteration, s.score, r.n_tokens
FROM scores AS s
JOIN rollouts AS r USING (iteration, rollout_id)
WHERE s.reward = 'proxy_accuracy' AND s.status = 'ok'
