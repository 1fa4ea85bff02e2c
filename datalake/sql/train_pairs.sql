-- The DPO pairs of one iteration with their texts: the meta-question (and its context, which `train` renders
-- into the policy's prompt) is the prompt, the two rollouts the answers, with the reference log-probs stored
-- so far. Parameter: $iteration.
WITH iteration_pairs AS (
    SELECT * FROM pairs WHERE iteration = $iteration
)
SELECT
    p.question_id,
    q.text                   AS prompt,
    q.context,
    c.response               AS chosen,
    r.response               AS rejected,
    p.chosen_rollout_id,
    p.rejected_rollout_id,
    p.ref_chosen_logp,
    p.ref_rejected_logp,
    p.ref_tokens,
    p.ref_model,
    p.ref_adapter,
    p.ref_tokenization
FROM iteration_pairs AS p
JOIN meta_questions AS q USING (question_id)
JOIN rollouts AS c ON c.iteration = p.iteration AND c.rollout_id = p.chosen_rollout_id
JOIN rollouts AS r ON r.iteration = p.iteration AND r.rollout_id = p.rejected_rollout_id
ORDER BY p.question_id
