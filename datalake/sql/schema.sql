-- The lake's contract: one CREATE TABLE per table. Nothing is stored in these tables; proxyreward reads
-- them to know each table's columns, types, NOT NULL and CHECK rules and key (PRIMARY KEY), validates
-- every frame against them before it is committed, and exposes the Parquet files as views of the same
-- shape. Add columns freely (nullable ones need no migration: older files read them as NULL).
-- A table with an `iteration` column is partitioned by it (tables/<table>/iteration=<n>/);
-- one without is stored under iteration=0.

CREATE TABLE meta_questions (
    question_id VARCHAR NOT NULL,
    text        VARCHAR NOT NULL CHECK (length(trim(text)) > 0),
    domain      VARCHAR NOT NULL,
    split       VARCHAR NOT NULL CHECK (split IN ('train', 'eval')),
    source      VARCHAR NOT NULL,
    context     VARCHAR,                 -- optional reference text (LongReward judges faithfulness against it)
    PRIMARY KEY (question_id)
);

CREATE TABLE proxy_questions (
    question_id  VARCHAR NOT NULL,
    statement_id VARCHAR NOT NULL,       -- '<question_id>:<nn>', unique over the table
    position     INTEGER NOT NULL,       -- 1-based order within the question, as numbered for the judge
    statement    VARCHAR NOT NULL CHECK (length(trim(statement)) > 0),
    answer       BOOLEAN NOT NULL,
    source       VARCHAR NOT NULL,
    weight       DOUBLE CHECK (weight > 0),  -- importance in proxy_weighted_accuracy; NULL counts as 1
    PRIMARY KEY (statement_id)
);

CREATE TABLE rollouts (
    iteration     BIGINT  NOT NULL,
    rollout_id    VARCHAR NOT NULL,
    question_id   VARCHAR NOT NULL,
    policy        VARCHAR NOT NULL,      -- base model + adapter hash that wrote it
    sample_index  INTEGER NOT NULL,
    response      VARCHAR NOT NULL,
    n_tokens      INTEGER NOT NULL,
    finish_reason VARCHAR,
    PRIMARY KEY (iteration, rollout_id)
);

CREATE TABLE judgments (
    iteration    BIGINT  NOT NULL,
    rollout_id   VARCHAR NOT NULL,
    statement_id VARCHAR NOT NULL,
    judge        VARCHAR NOT NULL,
    predicted    BOOLEAN,                -- NULL: the judge said Unknown, or could not answer
    status       VARCHAR NOT NULL CHECK (status IN ('ok', 'unknown', 'failed')),
    prompt_hash  VARCHAR NOT NULL,
    detail       VARCHAR,                -- why it failed
    PRIMARY KEY (iteration, rollout_id, statement_id, judge)
);

CREATE TABLE scores (
    iteration   BIGINT  NOT NULL,
    rollout_id  VARCHAR NOT NULL,
    question_id VARCHAR NOT NULL,
    reward      VARCHAR NOT NULL,        -- proxy_accuracy, proxy_precision, llm_judge, longreward, ...
    score       DOUBLE,                  -- NULL when status = 'failed'
    status      VARCHAR NOT NULL CHECK (status IN ('ok', 'failed')),
    judge       VARCHAR,                 -- engine:model|mode that produced it
    detail      VARCHAR,                 -- the failure's reason, or the judge's rationale
    prompt_hash VARCHAR,                 -- hash(es) of the judge's prompt template(s), '+'-joined (LongReward);
                                         -- NULL for length
    PRIMARY KEY (iteration, rollout_id, reward)
);

CREATE TABLE pairs (
    iteration           BIGINT  NOT NULL,
    question_id         VARCHAR NOT NULL,
    chosen_rollout_id   VARCHAR NOT NULL,
    rejected_rollout_id VARCHAR NOT NULL,
    chosen_score        DOUBLE  NOT NULL,
    rejected_score      DOUBLE  NOT NULL,
    score_variance      DOUBLE  NOT NULL,
    sql_hash            VARCHAR,         -- the selection SQL that chose the pair (file:hash)
    -- reference log-probs, computed once before training (NULL until then), and what they came from
    ref_chosen_logp     DOUBLE,
    ref_rejected_logp   DOUBLE,
    ref_tokens          VARCHAR,         -- hash of the pair's token ids they were computed for
    ref_model           VARCHAR,         -- base weights, by content (config and weight index)
    ref_adapter         VARCHAR,         -- adapter on top of them, by its weights ('' for none)
    ref_tokenization    VARCHAR,         -- hash of tokenizer, chat template and truncation settings
    PRIMARY KEY (iteration, question_id)
);

CREATE TABLE runs (
    iteration   BIGINT  NOT NULL,
    run_id      VARCHAR NOT NULL,
    stage       VARCHAR NOT NULL,        -- rollout, score, select, train, evaluate, generate, proxyqa
    reward      VARCHAR,                 -- score runs: the reward scored (proxy, llm_judge, longreward, length)
    status      VARCHAR NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    config      VARCHAR,                 -- JSON
    metrics     VARCHAR,                 -- JSON
    inputs      VARCHAR,                 -- JSON: the identity of everything the run read (lake/lineage.py)
    output      VARCHAR,                 -- the identity of what it wrote (a finished run)
    PRIMARY KEY (run_id)
);

CREATE TABLE eval_rollouts (             -- the answers `evaluate` judged, per iteration's policy
    iteration     BIGINT  NOT NULL,
    rollout_id    VARCHAR NOT NULL,
    question_id   VARCHAR NOT NULL,
    policy        VARCHAR NOT NULL,
    sample_index  INTEGER NOT NULL,
    response      VARCHAR NOT NULL,
    n_tokens      INTEGER NOT NULL,
    finish_reason VARCHAR,
    PRIMARY KEY (iteration, rollout_id)
);

CREATE TABLE evaluations (
    iteration   BIGINT  NOT NULL,
    policy      VARCHAR NOT NULL,
    question_id VARCHAR NOT NULL,
    reward      VARCHAR NOT NULL,        -- proxy_accuracy, ... by the evaluation judge; training_judge_proxy_accuracy,
                                         -- ... by the training judge when the evaluation judge is another one
    score       DOUBLE,
    judge       VARCHAR,                 -- engine:model|mode that scored it
    prompt_hash VARCHAR,                 -- hash of the judge's prompt template
    PRIMARY KEY (iteration, policy, question_id, reward)
);
