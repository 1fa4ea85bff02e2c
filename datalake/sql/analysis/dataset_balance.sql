-- The dataset per domain and split: questions, statements per question, share of false statements.
WITH per_question AS (
    SELECT
        q.question_id,
        q.domain,
        q.split,
        count(p.statement_id)                      AS statements,
        count(p.statement_id) FILTER (NOT p.answer) AS false_statements
    FROM meta_questions AS q
    LEFT JOIN proxy_questions AS p USING (question_id)
    GROUP BY ALL
)
SELECT
    domain,
    split,
    count(*)                                                AS questions,
    sum(statements)                                         AS statements,
    round(avg(statements), 1)                               AS statements_per_question,
    round(sum(false_statements) / nullif(sum(statements), 0), 3) AS false_share,
    min(statements)                                         AS min_statements,
    max(statements)                                         AS max_statements
FROM per_question
GROUP BY ALL
ORDER BY domain, split
