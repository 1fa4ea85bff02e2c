-- The report's evaluation plot: the mean over eval questions of every evaluated reward, per iteration.
SELECT iteration, reward, avg(score) AS score
FROM evaluations
GROUP BY ALL
ORDER BY iteration, reward
