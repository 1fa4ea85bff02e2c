-- The dataset by domain and split: questions, statements, false share, statement lengths (in words).
WITH statements AS (
    SELECT question_id, answer, length(regexp_split_to_array(trim(statement), '\s+')) AS words
    FROM proxy_questions
),
per_question AS (
    SELECT q.question_id, q.domain, q.split, q.source,
           count(s.question_id)                AS statements,
           count(*) FILTER (NOT s.answer)      AS false_statements,
           avg(s.words)                        AS mean_words,
           min(s.words)                        AS min_words,
           max(s.words)                        AS max_words
    FROM meta_questions AS q
    LEFT JOIN statements AS s USING (question_id)
    GROUP BY ALL
)
SELECT
    domain,
    split,
    count(*)                                                       AS questions,
    CAST(sum(statements) AS BIGINT)                                AS statements,
    count(*) FILTER (statements = 0)                               AS without_statements,
    round(sum(false_statements) / nullif(sum(statements), 0), 3)   AS false_share,
    round(avg(mean_words), 1)                                      AS statement_words,
    min(min_words)                                                 AS min_words,
    max(max_words)                                                 AS max_words,
    string_agg(DISTINCT source, ', ')                              AS sources
FROM per_question
GROUP BY ALL
ORDER BY domain, split
